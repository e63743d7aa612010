"""Occlusion maps (vit/occlusion.py): the numpy core, PyTorch's and the ONNX file's maps agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_classifier import OnnxClassifier
from vit.checkpoint import load_vit
from vit.occlusion import occluded, occlusion_map
from vit.relevance import forward_with_attention, occlusion_relevance, token_logits
from vit.rollout import class_rollout


def test_occluded_blanks_one_patch_per_copy_in_token_order() -> None:
    pixels = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4) + 1  # (C, H, W), no zeros
    copies = occluded(pixels, (3, 2))  # 2x2-pixel patches
    assert copies.shape == (6, 2, 6, 4)
    for g in range(6):
        r, c = divmod(g, 2)
        blank = np.zeros((6, 4), bool)
        blank[2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
        assert (copies[g][:, blank] == 0).all() and (copies[g][:, ~blank] == pixels[:, ~blank]).all()
    with pytest.raises(ValueError, match=r"one preprocessed image \(C, H, W\)"):
        occluded(pixels[None], (3, 2))


def test_occlusion_map_is_the_logit_drop_per_patch() -> None:
    logits = np.array([1.0, 2.0, 3.0])
    blanked = np.array([[1.0, 2.0, 3.0], [0.0, 2.5, 3.0], [1.0, 2.0, 1.0], [2.0, 2.0, 3.0]])  # (G=4, K)
    np.testing.assert_allclose(occlusion_map(logits, blanked, 0, (2, 2)), [[0.0, 1.0], [0.0, -1.0]])
    both = occlusion_map(logits, blanked, [2, 1], (2, 2))
    np.testing.assert_allclose(both, [[[0.0, 0.0], [2.0, 0.0]], [[0.0, -0.5], [0.0, 0.0]]])
    with pytest.raises(ValueError, match="class index out of range"):
        occlusion_map(logits, blanked, 3, (2, 2))
    with pytest.raises(ValueError, match=r"occluded logits \(4, K\)"):
        occlusion_map(logits, blanked[:3], 0, (2, 2))


def test_onnx_class_maps_equal_pytorch(tiny_onnx_token_logits: Path, tiny_avg_checkpoint: Path) -> None:
    """Both class-specific maps of OnnxClassifier.class_map (fp32 on onnxruntime) agree with
    the same methods through PyTorch: occlusion to 1e-4 of the logit scale, class-rollout to 1e-4."""
    model, _ = load_vit(tiny_avg_checkpoint)
    clf = OnnxClassifier(tiny_onnx_token_logits, backend="onnxruntime", precision="fp32")
    assert clf.info.class_specific and clf.info.class_map_methods == ["occlusion", "class-rollout"]
    pixels = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    x = torch.from_numpy(pixels)[None]
    for k in range(3):
        want = occlusion_relevance(model, x, k)[0]  # (Gh, Gw)
        np.testing.assert_allclose(clf.class_map(pixels, k), want, atol=1e-4)
    pair = occlusion_relevance(model, x.expand(2, -1, -1, -1), [0, 2])  # (2, Gh, Gw)
    np.testing.assert_allclose(clf.class_map(pixels, [0, 2]), pair, atol=1e-4)
    with torch.no_grad():
        tokens, _ = model.forward_features(x)
        shares = token_logits(model, tokens).numpy()
    _, weights = forward_with_attention(model, x)
    want = class_rollout(weights, shares, 1, grid=(4, 4))[0]
    np.testing.assert_allclose(clf.class_map(pixels, 1, method="class-rollout"), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="class index out of range"):
        clf.class_map(pixels, 3, method="class-rollout")


def test_class_map_methods_and_errors(tiny_onnx: Path) -> None:
    clf = OnnxClassifier(tiny_onnx, backend="onnxruntime")  # logits only: occlusion still works
    assert clf.info.class_map_methods == ["occlusion"]
    pixels = np.zeros((3, 32, 32), np.float32)
    assert clf.class_map(pixels, 0).shape == clf.info.grid
    with pytest.raises(ValueError, match="'class-rollout' is not available"):
        clf.class_map(pixels, 0, method="class-rollout")
    with pytest.raises(ValueError, match=r"one preprocessed image \(3, 32, 32\)"):
        clf.class_map(pixels[None], 0)
