"""Random-mask relevance (RISE: Petsiuk, Das & Saenko 2018, "Randomized Input Sampling for
Explanation of Black-box Models"): how much a class's logit gains, on average, when a patch
is shown rather than blanked, over many copies of the image with half of its patches blanked.

The model runs on ``num_masks`` copies; in each, about half of the patches are blanked as
occlusion and the deletion test blank them (0 after normalization: the dataset's mean
colour). A patch's score for a class is the mean logit of the copies that show it minus
the mean of those that blank it. Every patch is blanked in exactly half of the copies,
independently of the others, so the score is a Monte-Carlo estimate of the patch's Banzhaf
value in the game whose players are the patches and whose payoff is the class logit: what
the patch adds among many others missing, where occlusion only sees it missing from an
otherwise whole image. A model that reads its answer redundantly from many patches barely
notices one of them missing, so occlusion ranks its patches poorly; the deletion test
removes many at once, as these masks do (benchmarks/README.md, "Faithfulness").

Like occlusion it needs nothing but the model's logits (the same numbers from PyTorch,
onnxruntime or OpenVINO), and one batch of runs gives every class's map. The masks come
from a seeded generator: the same image always gets the same map, on every path. numpy
only, so the serving path stays torch-free.

Shape letters: M masks, K classes, G = Gh*Gw patches of the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NUM_MASKS = 256  # copies per image: -53% deletion AUC against random at 256, -55% at 512 (README)
SEED = 0


def random_masks(grid: tuple[int, int], num_masks: int = NUM_MASKS, seed: int = SEED) -> np.ndarray:
    """(M, Gh, Gw) bool masks, True on the patches a copy blanks: each patch is blanked in
    exactly half of the copies, which half drawn independently for every patch."""
    if num_masks < 2 or num_masks % 2:
        raise ValueError(f"num_masks: expected an even number >= 2, got {num_masks}")
    gh, gw = grid
    rng = np.random.default_rng(seed)
    half = np.arange(num_masks)[:, None] < num_masks // 2  # (M, 1): the first half blanked
    masks = rng.permuted(np.broadcast_to(half, (num_masks, gh * gw)), axis=0)  # (M, G), shuffled per patch
    return masks.reshape(num_masks, gh, gw)


def rise_map(masked_logits: np.ndarray, masks: np.ndarray, classes: int | Sequence[int]) -> np.ndarray:
    """The logits (M, K) of an image's copies under ``masks`` (M, Gh, Gw) from
    :func:`random_masks` (blanked with :func:`vit.occlusion.masked`) -> each patch's mean
    logit shown minus blanked, (Gh, Gw) for one class index or (n, Gh, Gw) for a sequence of
    them. Positive where the patch raises the class."""
    logits = np.asarray(masked_logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"expected masked logits (M, K), got shape {logits.shape}")
    if masks.ndim != 3 or len(masks) != len(logits):
        raise ValueError(f"expected one mask (Gh, Gw) per copy: {len(logits)} logit rows, "
                         f"masks {masks.shape}")
    index = np.asarray(classes, dtype=np.int64)
    if (index < 0).any() or (index >= logits.shape[1]).any():
        raise ValueError(f"class index out of range [0, {logits.shape[1] - 1}]: {index.tolist()}")
    blank = masks.reshape(len(masks), -1).astype(np.float64)  # (M, G)
    chosen = logits[:, index.reshape(-1)]  # (M, n)
    shown = chosen.T @ (1.0 - blank) / (1.0 - blank).sum(axis=0)  # (n, G): mean over the copies showing it
    hidden = chosen.T @ blank / blank.sum(axis=0)  # (n, G): mean over those blanking it
    maps = (shown - hidden).reshape(-1, *masks.shape[1:])  # (n, Gh, Gw)
    return maps if index.ndim else maps[0]
