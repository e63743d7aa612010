"""Occlusion maps (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
Networks"): how much a class's logit falls when the patches around each patch are blanked.

Class-specific for every class at once, exact by definition (it is what the model does,
not a reading of its internals), and it needs nothing but the model's logits: the same
numbers from PyTorch, onnxruntime or OpenVINO. numpy only, so the serving path stays
torch-free. A blanked patch is set to 0 after normalization, i.e. the dataset's mean
colour, as the deletion test (``benchmarks/faithfulness.py``) removes patches.

Windows of several sizes: every square window of k x k patches (stride one patch) is
blanked in turn, for each k in ``sizes``; a patch's score at size k is the mean logit drop
of the windows of that size that cover it, and its map value the mean over the sizes.
Size 1 alone is classic one-patch occlusion; adding windows of 2 x 2 patches also catches
what the model can still read from a neighbour when one patch is missing. On the CIFAR-10
models the two sizes rank patches clearly better in the deletion test (benchmarks/README.md,
"Faithfulness") for 113 runs per image instead of 64.

Shape letters: B batch, C channels, H/W image size, Gh/Gw patch grid, G = Gh*Gw, K classes,
W windows (all sizes, in the order of ``sizes``, each size's windows row-major).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIZES = (1, 2)  # window sides in patches


def windows(grid: tuple[int, int], sizes: Sequence[int] = SIZES) -> np.ndarray:
    """Every k x k window of patches of ``grid`` for each k in ``sizes``: (W, Gh, Gw) bool
    masks, True on the patches a window blanks."""
    gh, gw = grid
    if not sizes or any(int(k) < 1 or int(k) > min(gh, gw) for k in sizes):
        raise ValueError(f"sizes: window sides must be in [1, {min(gh, gw)}] for grid {grid}, "
                         f"got {list(sizes)}")
    masks = []
    for k in sizes:
        for r in range(gh - k + 1):
            for c in range(gw - k + 1):
                m = np.zeros((gh, gw), dtype=bool)
                m[r:r + k, c:c + k] = True
                masks.append(m)
    return np.stack(masks)  # (W, Gh, Gw)


def masked(pixels: np.ndarray, grid: tuple[int, int], masks: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """One preprocessed image (C, H, W) and (M, Gh, Gw) bool masks -> M copies (M, C, H, W),
    copy m with the patches where ``masks[m]`` is True set to ``fill``. What occlusion and
    random-mask relevance (:mod:`vit.rise`) run the model on."""
    if pixels.ndim != 3:
        raise ValueError(f"expected one preprocessed image (C, H, W), got shape {pixels.shape}")
    gh, gw = grid
    if masks.ndim != 3 or masks.shape[1:] != (gh, gw):
        raise ValueError(f"expected (M, {gh}, {gw}) masks for grid {grid}, got shape {masks.shape}")
    _, h, w = pixels.shape
    ph, pw = -(-h // gh), -(-w // gw)  # patch size in pixels (the last row/column may be cut)
    pixel_masks = masks.repeat(ph, axis=1).repeat(pw, axis=2)[:, :h, :w]  # (M, H, W)
    copies = np.repeat(pixels[None], len(masks), axis=0)  # (M, C, H, W)
    np.copyto(copies, np.asarray(fill, dtype=pixels.dtype), where=pixel_masks[:, None])
    return copies


def occluded(pixels: np.ndarray, grid: tuple[int, int], fill: float = 0.0,
             sizes: Sequence[int] = SIZES) -> np.ndarray:
    """One preprocessed image (C, H, W) -> W copies (W, C, H, W), copy w with the patches of
    window w (:func:`windows`; with ``sizes=(1,)`` patch w, row-major as the model's tokens)
    set to ``fill``."""
    return masked(pixels, grid, windows(grid, sizes), fill)


def occlusion_map(logits: np.ndarray, occluded_logits: np.ndarray, classes: int | Sequence[int],
                  grid: tuple[int, int], sizes: Sequence[int] = SIZES) -> np.ndarray:
    """The drop of each class logit when the windows around each patch are blanked:
    ``logits`` (K,) of the image and ``occluded_logits`` (W, K) of :func:`occluded`'s copies
    (same ``sizes``) -> (Gh, Gw) for one class index, or (n, Gh, Gw) for a sequence of them.
    Positive where the patch raises the class, negative where it argues against it."""
    logits, occ = np.asarray(logits, np.float64), np.asarray(occluded_logits, np.float64)
    masks = windows(grid, sizes).reshape(-1, grid[0] * grid[1]).astype(np.float64)  # (W, G)
    if logits.ndim != 1 or occ.shape != (len(masks), logits.shape[0]):
        raise ValueError(f"expected logits (K,) and occluded logits ({len(masks)}, K) for grid {grid} "
                         f"and window sizes {list(sizes)}, got {logits.shape} and {occ.shape}")
    index = np.asarray(classes, dtype=np.int64)
    if (index < 0).any() or (index >= logits.shape[0]).any():
        raise ValueError(f"class index out of range [0, {logits.shape[0] - 1}]: {index.tolist()}")
    drop = (logits[None] - occ)[:, index.reshape(-1)]  # (W, n)
    scores, start = np.zeros((drop.shape[1], masks.shape[1])), 0  # (n, G)
    for k in sizes:
        count = (grid[0] - k + 1) * (grid[1] - k + 1)
        cover = masks[start:start + count]  # (Wk, G): which windows of size k cover each patch
        scores += (drop[start:start + count].T @ cover) / cover.sum(axis=0)  # (n, G) mean drop
        start += count
    maps = (scores / len(sizes)).reshape(-1, *grid)  # (n, Gh, Gw)
    return maps if index.ndim else maps[0]
