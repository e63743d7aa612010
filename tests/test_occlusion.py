"""Occlusion maps (vit/occlusion.py): the numpy core, PyTorch's and the ONNX file's maps agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_classifier import OnnxClassifier
from vit.checkpoint import load_vit
from vit.occlusion import occluded, occlusion_map, windows
from vit.relevance import forward_with_attention, occlusion_relevance, token_logits
from vit.rollout import class_rollout


def test_occluded_blanks_one_patch_per_copy_in_token_order() -> None:
    pixels = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4) + 1  # (C, H, W), no zeros
    copies = occluded(pixels, (3, 2), sizes=(1,))  # 2x2-pixel patches
    assert copies.shape == (6, 2, 6, 4)
    for g in range(6):
        r, c = divmod(g, 2)
        blank = np.zeros((6, 4), bool)
        blank[2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
        assert (copies[g][:, blank] == 0).all() and (copies[g][:, ~blank] == pixels[:, ~blank]).all()
    with pytest.raises(ValueError, match=r"one preprocessed image \(C, H, W\)"):
        occluded(pixels[None], (3, 2))


def test_windows_of_every_size_in_order_and_cut_patches() -> None:
    masks = windows((3, 2))  # sizes (1, 2): 6 single patches, then the 2 windows of 2x2 patches
    assert masks.shape == (8, 3, 2) and masks[:6].sum(axis=(1, 2)).tolist() == [1] * 6
    np.testing.assert_array_equal(masks[6], [[1, 1], [1, 1], [0, 0]])
    np.testing.assert_array_equal(masks[7], [[0, 0], [1, 1], [1, 1]])
    pixels = np.ones((1, 5, 5), np.float32)  # a 2x2 grid of 3-pixel patches, the last ones cut to 2
    copies = occluded(pixels, (2, 2), fill=-1.0)  # (4 + 1, 1, 5, 5)
    assert copies.shape == (5, 1, 5, 5)
    assert (copies[3, 0, 3:, 3:] == -1).all() and (copies[3, 0, :3] == 1).all()
    assert (copies[4] == -1).all()  # the one 2x2 window blanks the whole image
    with pytest.raises(ValueError, match=r"sizes: window sides must be in \[1, 2\]"):
        windows((2, 3), sizes=(3,))


def test_occlusion_map_is_the_logit_drop_per_patch() -> None:
    logits = np.array([1.0, 2.0, 3.0])
    blanked = np.array([[1.0, 2.0, 3.0], [0.0, 2.5, 3.0], [1.0, 2.0, 1.0], [2.0, 2.0, 3.0]])  # (G=4, K)
    one = occlusion_map(logits, blanked, 0, (2, 2), sizes=(1,))
    np.testing.assert_allclose(one, [[0.0, 1.0], [0.0, -1.0]])
    both = occlusion_map(logits, blanked, [2, 1], (2, 2), sizes=(1,))
    np.testing.assert_allclose(both, [[[0.0, 0.0], [2.0, 0.0]], [[0.0, -0.5], [0.0, 0.0]]])
    with pytest.raises(ValueError, match="class index out of range"):
        occlusion_map(logits, blanked, 3, (2, 2), sizes=(1,))
    with pytest.raises(ValueError, match=r"occluded logits \(4, K\)"):
        occlusion_map(logits, blanked[:3], 0, (2, 2), sizes=(1,))


def test_occlusion_map_averages_the_windows_covering_a_patch_then_the_sizes() -> None:
    """Grid 2x3 with sizes (1, 2): 6 single patches, then the 2x2 windows at columns 0 and 1.
    A patch's score is the mean of its single drop and of the drops of the 2x2 windows
    covering it (one for the corner columns, two for the middle one), halved."""
    logits = np.array([5.0, 0.0])
    single = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # drop of class 0 per patch
    window = np.array([10.0, 20.0])  # drop of class 0 per 2x2 window
    blanked = np.stack([logits[0] - np.concatenate([single, window]), np.zeros(8)], axis=1)  # (8, K)
    got = occlusion_map(logits, blanked, 0, (2, 3))
    pair = np.array([10.0, 15.0, 20.0])  # per column: window 0, both windows' mean, window 1
    np.testing.assert_allclose(got, (single.reshape(2, 3) + pair[None]) / 2)
    with pytest.raises(ValueError, match=r"occluded logits \(8, K\) for grid \(2, 3\) and window sizes"):
        occlusion_map(logits, blanked[:6], 0, (2, 3))


def test_onnx_class_maps_equal_pytorch(tiny_onnx_token_logits: Path, tiny_avg_checkpoint: Path) -> None:
    """Occlusion and class-rollout of OnnxClassifier.class_map (fp32 on onnxruntime) agree with
    the same methods through PyTorch: occlusion to 1e-4 of the logit scale, class-rollout to 1e-4."""
    model, _ = load_vit(tiny_avg_checkpoint)
    clf = OnnxClassifier(tiny_onnx_token_logits, backend="onnxruntime", precision="fp32")
    assert clf.info.class_specific and clf.info.class_map_methods == ["rise", "occlusion", "class-rollout"]
    pixels = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    x = torch.from_numpy(pixels)[None]
    for k in range(3):
        want = occlusion_relevance(model, x, k)[0]  # (Gh, Gw)
        np.testing.assert_allclose(clf.class_map(pixels, k, "occlusion"), want, atol=1e-4)
    pair = occlusion_relevance(model, x.expand(2, -1, -1, -1), [0, 2])  # (2, Gh, Gw)
    np.testing.assert_allclose(clf.class_map(pixels, [0, 2], "occlusion"), pair, atol=1e-4)
    with torch.no_grad():
        tokens, _ = model.forward_features(x)
        shares = token_logits(model, tokens).numpy()
    _, weights = forward_with_attention(model, x)
    want = class_rollout(weights, shares, 1, grid=(4, 4))[0]
    np.testing.assert_allclose(clf.class_map(pixels, 1, method="class-rollout"), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="class index out of range"):
        clf.class_map(pixels, 3, method="class-rollout")


def test_class_map_methods_and_errors(tiny_onnx: Path) -> None:
    clf = OnnxClassifier(tiny_onnx, backend="onnxruntime")  # logits only: rise and occlusion still work
    assert clf.info.class_map_methods == ["rise", "occlusion"]
    pixels = np.zeros((3, 32, 32), np.float32)
    assert clf.class_map(pixels, 0).shape == clf.info.grid == clf.class_map(pixels, 0, "occlusion").shape
    with pytest.raises(ValueError, match="'class-rollout' is not available"):
        clf.class_map(pixels, 0, method="class-rollout")
    with pytest.raises(ValueError, match=r"one preprocessed image \(3, 32, 32\)"):
        clf.class_map(pixels[None], 0)
