"""Attention rollout (vit/rollout.py) against a direct, slow, loop-based reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vit.rollout import (
    add_residual,
    attention_rollout,
    class_rollout,
    discard_weakest,
    gradient_weighted_rollout,
    normalize_maps,
    raw_attention,
)


def random_attention(rng: np.random.Generator, b: int, depth: int, heads: int, n: int,
                     scale: float = 2.0) -> np.ndarray:
    """Row-stochastic (B, L, H, N, N) weights, like softmax attention."""
    scores = rng.normal(0.0, scale, (b, depth, heads, n, n))
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_rollout(w: np.ndarray, head_fusion: str, discard_ratio: float, start_layer: int,
                      prefix: int, grid: tuple[int, int], pool: str) -> np.ndarray:
    """Everything spelled out with Python loops, one image at a time."""
    b, depth, heads, n, _ = w.shape
    out = np.zeros((b, *grid))
    for i in range(b):
        joint = None
        for layer in range(start_layer, depth):
            a = [[0.0] * n for _ in range(n)]
            for r in range(n):
                for c in range(n):
                    vals = [w[i, layer, h, r, c] for h in range(heads)]
                    a[r][c] = {"mean": sum(vals) / heads, "max": max(vals), "min": min(vals)}[head_fusion]
            cands = [(a[r][c], r * n + c) for r in range(n) for c in range(n) if not (r == c and r < prefix)]
            k = int(discard_ratio * len(cands))
            for _, pos in sorted(cands, key=lambda t: t[0])[:k]:  # sorted() is stable
                a[pos // n][pos % n] = 0.0
            for r in range(n):
                a[r][r] += 1.0
                total = sum(a[r])
                a[r] = [v / total for v in a[r]]
            if joint is None:
                joint = a
            else:
                joint = [[sum(a[r][t] * joint[t][c] for t in range(n)) for c in range(n)] for r in range(n)]
        rows = [0] if pool == "token" else list(range(prefix, n))
        for p in range(grid[0] * grid[1]):
            out[i, p // grid[1], p % grid[1]] = sum(joint[r][prefix + p] for r in rows) / len(rows)
    return out


SETTINGS = [
    # head_fusion, discard_ratio, start_layer, prefix, grid, pool
    ("mean", 0.0, 0, 1, (2, 3), "token"),
    ("max", 0.5, 0, 1, (2, 3), "token"),
    ("min", 0.9, 1, 1, (3, 2), "token"),
    ("mean", 0.3, 0, 0, (2, 3), "avg"),
    ("max", 0.7, 2, 0, (3, 3), "avg"),
    ("mean", 0.4, 0, 1, (1, 5), "avg"),  # class token present, average-pooled model
    ("mean", 0.2, 0, 2, (2, 2), "token"),  # two prefix tokens (e.g. a register)
]


@pytest.mark.parametrize("head_fusion,discard_ratio,start_layer,prefix,grid,pool", SETTINGS)
def test_rollout_matches_loop_reference(head_fusion: str, discard_ratio: float, start_layer: int,
                                        prefix: int, grid: tuple[int, int], pool: str) -> None:
    rng = np.random.default_rng(hash((head_fusion, discard_ratio, prefix, grid)) % 2**32)
    n = prefix + grid[0] * grid[1]
    w = random_attention(rng, 3, 3, 4, n)
    got = attention_rollout(w, head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer,
                            num_prefix_tokens=prefix, grid=grid, pool=pool)
    want = reference_rollout(w, head_fusion, discard_ratio, start_layer, prefix, grid, pool)
    assert got.shape == (3, *grid)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_rollout_accepts_a_sequence_of_layers_and_float32() -> None:
    rng = np.random.default_rng(1)
    w = random_attention(rng, 2, 4, 3, 10).astype(np.float32)
    stacked = attention_rollout(w, grid=(3, 3), discard_ratio=0.2)
    per_layer = attention_rollout([w[:, i] for i in range(4)], grid=(3, 3), discard_ratio=0.2)
    np.testing.assert_allclose(stacked, per_layer)
    np.testing.assert_allclose(attention_rollout(w), attention_rollout(w, grid=(3, 3)))  # square by default


def test_discard_is_per_image() -> None:
    """Two images whose attention lives on different scales: each gets its own threshold,
    so a batch gives exactly what each image gives alone."""
    rng = np.random.default_rng(2)
    peaky = random_attention(rng, 1, 2, 2, 5, scale=6.0)
    flat = random_attention(rng, 1, 2, 2, 5, scale=0.1) * 0.01  # far below the peaky image's values
    w = np.concatenate([peaky, flat])
    fused = w.mean(axis=2)  # (B, L, N, N)
    kept = discard_weakest(fused, 0.5, num_prefix_tokens=1)
    candidates = 5 * 5 - 1
    for i in range(2):
        for layer in range(2):
            zeroed = (kept[i, layer] == 0) & (fused[i, layer] != 0)
            assert zeroed.sum() == int(0.5 * candidates)  # the flat image is not wiped out
            assert kept[i, layer, 0, 0] == fused[i, layer, 0, 0]  # class token's self-attention kept
    batch = attention_rollout(w, discard_ratio=0.5, grid=(2, 2))
    alone = np.concatenate([attention_rollout(w[i:i + 1], discard_ratio=0.5, grid=(2, 2)) for i in range(2)])
    np.testing.assert_allclose(batch, alone)


def test_rows_are_normalized_on_the_right_axis() -> None:
    rng = np.random.default_rng(3)
    a = discard_weakest(random_attention(rng, 2, 1, 1, 6)[:, 0, 0], 0.6, 1)
    r = add_residual(a)
    np.testing.assert_allclose(r.sum(-1), 1.0)
    # with every block row-stochastic, so is the whole product: the class row's relevance
    # over all tokens sums to 1
    w = random_attention(rng, 2, 3, 2, 7)
    maps = attention_rollout(w, grid=(2, 3), discard_ratio=0.0)
    assert np.all(maps > 0) and np.all(maps.sum(axis=(1, 2)) < 1.0)


def test_raw_attention_layer_and_head() -> None:
    rng = np.random.default_rng(4)
    w = random_attention(rng, 2, 3, 4, 7)
    np.testing.assert_allclose(raw_attention(w, 1, 2, grid=(2, 3)), w[:, 1, 2, 0, 1:].reshape(2, 2, 3))
    np.testing.assert_allclose(raw_attention(w, -1, None, grid=(2, 3)),
                               w[:, 2].mean(1)[:, 0, 1:].reshape(2, 2, 3))
    np.testing.assert_allclose(raw_attention(w, 0, 1, num_prefix_tokens=1, grid=(2, 3), pool="avg"),
                               w[:, 0, 1, 1:, 1:].mean(1).reshape(2, 2, 3))


def test_gradient_weighted_rollout_reference() -> None:
    rng = np.random.default_rng(5)
    w = random_attention(rng, 2, 3, 2, 5)
    g = rng.normal(size=w.shape)
    got = gradient_weighted_rollout(w, g, grid=(2, 2))
    for i in range(2):
        joint = np.eye(5)
        for layer in range(3):
            cam = np.zeros((5, 5))
            for h in range(2):
                cam += np.maximum(g[i, layer, h] * w[i, layer, h], 0) / 2
            joint = joint + cam @ joint
        np.testing.assert_allclose(got[i].ravel(), joint[0, 1:])


def test_normalize_maps() -> None:
    maps = np.array([[[1.0, 3.0]], [[2.0, 2.0]]])
    np.testing.assert_allclose(normalize_maps(maps), [[[0.0, 1.0]], [[0.0, 0.0]]])


@pytest.mark.parametrize("kwargs,message", [
    ({"head_fusion": "median"}, "head_fusion"),
    ({"discard_ratio": 1.0}, "discard_ratio"),
    ({"start_layer": 5}, "start_layer"),
    ({"grid": (2, 2)}, "does not match"),
    ({"num_prefix_tokens": 0, "pool": "token", "grid": (2, 5)}, "class token"),
    ({"num_prefix_tokens": 2}, "square"),
    ({"num_prefix_tokens": 6}, "pass pool"),  # registers: the readout must be named
])
def test_bad_arguments_say_what_is_wrong(kwargs: dict, message: str) -> None:
    w = random_attention(np.random.default_rng(6), 1, 2, 2, 10)
    with pytest.raises(ValueError, match=message):
        attention_rollout(w, **kwargs)


def test_rollout_module_is_torch_free() -> None:
    code = "import sys, vit.rollout; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_class_rollout_keeps_the_class_total_and_checks_its_inputs() -> None:
    rng = np.random.default_rng(0)
    w = rng.random((2, 3, 2, 6, 6))
    w /= w.sum(-1, keepdims=True)  # (B, L, H, N, N) rows summing to 1, 2 registers + 2x2 patches
    shares = rng.standard_normal((2, 4, 3))  # (B, Gh*Gw, K)
    maps = class_rollout(w, shares, [2, 0], num_prefix_tokens=2, grid=(2, 2))
    assert maps.shape == (2, 2, 2)
    every = class_rollout(w, shares, None, num_prefix_tokens=2, grid=(2, 2))  # (B, K, Gh, Gw)
    assert every.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(maps, every[[0, 1], [2, 0]])
    identity = np.broadcast_to(np.eye(6), (2, 1, 1, 6, 6))  # no mixing: the map is the shares
    np.testing.assert_allclose(class_rollout(identity, shares, 1, num_prefix_tokens=2, grid=(2, 2)),
                               shares[:, :, 1].reshape(2, 2, 2))
    with pytest.raises(ValueError, match="token_logits must have shape"):
        class_rollout(w, shares[:, :3], 0, num_prefix_tokens=2, grid=(2, 2))
    with pytest.raises(ValueError, match="class index out of range"):
        class_rollout(w, shares, 3, num_prefix_tokens=2, grid=(2, 2))
