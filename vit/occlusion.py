"""Occlusion maps (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
Networks"): how much a class's logit falls when one patch of the image is blanked.

Class-specific for every class at once, exact by definition (it is what the model does,
not a reading of its internals), and it needs nothing but the model's logits: the same
numbers from PyTorch, onnxruntime or OpenVINO. numpy only, so the serving path stays
torch-free. A blanked patch is set to 0 after normalization, i.e. the dataset's mean
colour, as the deletion test (``benchmarks/faithfulness.py``) removes patches.

Measured on the CIFAR-10 model (benchmarks/README.md, "Faithfulness"), occlusion ranks the
patches the model needs better than attention rollout and than gradient-weighted rollout.

Shape letters: B batch, C channels, H/W image size, Gh/Gw patch grid, G = Gh*Gw, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def occluded(pixels: np.ndarray, grid: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """One preprocessed image (C, H, W) -> G copies (G, C, H, W), copy g with patch g of the
    ``grid`` (row-major, as the model's tokens) set to ``fill``."""
    if pixels.ndim != 3:
        raise ValueError(f"expected one preprocessed image (C, H, W), got shape {pixels.shape}")
    gh, gw = grid
    _, h, w = pixels.shape
    ph, pw = -(-h // gh), -(-w // gw)  # patch size in pixels (the last row/column may be cut)
    copies = np.repeat(pixels[None], gh * gw, axis=0)  # (G, C, H, W)
    for g in range(gh * gw):
        r, c = divmod(g, gw)
        copies[g, :, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = fill
    return copies


def occlusion_map(logits: np.ndarray, occluded_logits: np.ndarray, classes: int | Sequence[int],
                  grid: tuple[int, int]) -> np.ndarray:
    """The drop of each class logit when each patch is blanked: ``logits`` (K,) of the
    image and ``occluded_logits`` (G, K) of :func:`occluded`'s copies -> (Gh, Gw) for one
    class index, or (n, Gh, Gw) for a sequence of them. Positive where the patch raises the
    class, negative where it argues against it."""
    logits, occ = np.asarray(logits, np.float64), np.asarray(occluded_logits, np.float64)
    gh, gw = grid
    if logits.ndim != 1 or occ.shape != (gh * gw, logits.shape[0]):
        raise ValueError(f"expected logits (K,) and occluded logits ({gh * gw}, K), "
                         f"got {logits.shape} and {occ.shape}")
    index = np.asarray(classes, dtype=np.int64)
    if (index < 0).any() or (index >= logits.shape[0]).any():
        raise ValueError(f"class index out of range [0, {logits.shape[0] - 1}]: {index.tolist()}")
    drop = (logits[None] - occ)[:, index.reshape(-1)]  # (G, n)
    maps = drop.T.reshape(-1, gh, gw)  # (n, Gh, Gw)
    return maps if index.ndim else maps[0]
