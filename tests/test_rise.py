"""Random-mask relevance (vit/rise.py): the masks, the estimator, and PyTorch's and the ONNX
file's maps agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_classifier import OnnxClassifier
from vit.checkpoint import load_vit
from vit.occlusion import masked
from vit.relevance import rise_relevance
from vit.rise import random_masks, rise_map


def test_every_patch_is_blanked_in_half_of_the_masks_drawn_from_the_seed() -> None:
    masks = random_masks((3, 4), 64, seed=5)
    assert masks.shape == (64, 3, 4) and masks.dtype == bool
    assert (masks.sum(axis=0) == 32).all()  # each patch: blanked 32 times, shown 32 times
    np.testing.assert_array_equal(random_masks((3, 4), 64, seed=5), masks)  # the same map every time
    assert 0.3 < (random_masks((3, 4), 64, seed=6) == masks).mean() < 0.7  # another seed, other masks
    columns = masks.reshape(64, -1).T.astype(float)
    assert np.abs(np.corrcoef(columns)[np.triu_indices(12, 1)]).max() < 0.5  # patches drawn independently
    for bad in (0, 1, 7):
        with pytest.raises(ValueError, match=f"num_masks: expected an even number >= 2, got {bad}"):
            random_masks((3, 4), bad)


def test_masked_copies_blank_the_masked_patches() -> None:
    pixels = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6) + 1  # (C, H, W), 2x2 grid of 2x3 patches
    masks = random_masks((2, 2), 8, seed=1)
    copies = masked(pixels, (2, 2), masks, fill=-1.0)
    assert copies.shape == (8, 2, 4, 6)
    for copy, mask in zip(copies, masks, strict=True):
        blank = mask.repeat(2, axis=0).repeat(3, axis=1)  # (H, W)
        assert (copy[:, blank] == -1).all() and (copy[:, ~blank] == pixels[:, ~blank]).all()


def test_rise_map_is_the_mean_logit_shown_minus_blanked() -> None:
    rng = np.random.default_rng(0)
    masks = random_masks((2, 3), 16, seed=2)  # (M, Gh, Gw)
    flat = masks.reshape(16, 6)
    logits = rng.standard_normal((16, 4))  # (M, K)
    want = np.array([[logits[~flat[:, g], k].mean() - logits[flat[:, g], k].mean() for g in range(6)]
                     for k in range(4)]).reshape(4, 2, 3)
    np.testing.assert_allclose(rise_map(logits, masks, 1), want[1])
    np.testing.assert_allclose(rise_map(logits, masks, [3, 0]), want[[3, 0]])
    with pytest.raises(ValueError, match=r"class index out of range \[0, 3\]"):
        rise_map(logits, masks, 4)
    with pytest.raises(ValueError, match=r"expected masked logits \(M, K\)"):
        rise_map(logits[0], masks, 0)
    with pytest.raises(ValueError, match=r"expected one mask \(Gh, Gw\) per copy: 16 logit rows"):
        rise_map(logits, masks[:8], 0)


def test_rise_map_recovers_what_each_patch_adds_to_an_additive_model() -> None:
    """A logit that is a sum of what each shown patch adds: the map estimates those amounts
    (the patches' Banzhaf values), close enough to rank them, for every class at once."""
    grid, adds = (3, 3), np.array([[3.0, 0.0, -1.0, 0.5, 2.0, 0.0, 1.0, -2.0, 0.2],  # class 0 (per patch)
                                   [0.0, 1.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0]])  # class 1
    masks = random_masks(grid, 2048)  # (M, Gh, Gw)
    shown = ~masks.reshape(2048, 9)
    logits = shown.astype(float) @ adds.T + 5.0  # (M, K)
    maps = rise_map(logits, masks, [0, 1])
    np.testing.assert_allclose(maps.reshape(2, 9), adds, atol=0.25)
    assert np.argsort(-maps[0].ravel())[:3].tolist() == [0, 4, 6]


def test_onnx_rise_maps_equal_pytorch(tiny_onnx_token_logits: Path, tiny_avg_checkpoint: Path) -> None:
    """OnnxClassifier.class_map's default (rise, fp32 on onnxruntime) is vit.relevance.rise_relevance
    of the same image to 1e-4 of the logit scale, for one class and for several."""
    model, _ = load_vit(tiny_avg_checkpoint)
    clf = OnnxClassifier(tiny_onnx_token_logits, backend="onnxruntime", precision="fp32")
    assert clf.info.class_map_methods[0] == "rise"
    pixels = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    x = torch.from_numpy(pixels)[None]
    for k in range(3):
        want = rise_relevance(model, x, k)[0]  # (Gh, Gw)
        assert np.abs(want).max() > 1e-3  # not a flat map
        np.testing.assert_allclose(clf.class_map(pixels, k), want, atol=1e-4)
    pair = rise_relevance(model, x.expand(2, -1, -1, -1), [0, 2], num_masks=32)  # (2, Gh, Gw)
    np.testing.assert_allclose(clf.class_map(pixels, [0, 2], num_masks=32, batch_size=5), pair, atol=1e-4)
