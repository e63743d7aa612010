"""On images whose class is decided by one patch, a briefly trained ViT's maps peak there."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from demo.explain import class_relevance, forward_with_attention
from vit.rollout import attention_rollout
from vit.vit import ViT, ViTConfig

SIZE, PATCH = 16, 4
GRID = SIZE // PATCH


def one_patch_images(n: int, rng: np.random.Generator, *, with_empty: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Dim noise everywhere and one saturated patch at a random place: red is class 0, blue
    class 1. Class 2 has no such patch (``with_empty``), so that neither colour can be told by
    the other's absence: the evidence for classes 0 and 1 is in that one patch.
    Returns images (n, 3, 16, 16), labels (n,), and the marked patch's index (row-major; -1)."""
    x = rng.uniform(0.0, 0.5, (n, 3, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 3 if with_empty else 2, n)
    where = np.where(y < 2, rng.integers(0, GRID * GRID, n), -1)
    for i in np.flatnonzero(y < 2):
        r, c = divmod(int(where[i]), GRID)
        x[i, :, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = (
            np.array([1.0, 0.0, 0.0] if y[i] == 0 else [0.0, 0.0, 1.0], np.float32)[:, None, None])
    return torch.from_numpy(x), torch.from_numpy(y), where


@lru_cache(maxsize=4)  # shared with test_rollout_faithfulness.py; nothing mutates the models
def train(class_token: bool, steps: int = 60, seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ViTConfig(image_size=SIZE, patch_size=PATCH, num_classes=3, dim=32, depth=2, num_heads=2,
                       mlp_ratio=2.0, class_token=class_token, global_pool="token" if class_token else "avg")
    model = ViT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(steps):
        x, y, _ = one_patch_images(64, rng)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", params=[True, False], ids=["class-token", "avg-pool"])
def trained(request):
    return train(request.param)


def test_maps_peak_on_the_deciding_patch(trained):
    x, y, where = one_patch_images(100, np.random.default_rng(123), with_empty=False)
    logits, weights = forward_with_attention(trained, x)
    assert (logits.argmax(-1) == y).float().mean() > 0.95  # it did learn the task
    prefix = trained.num_prefix_tokens
    rollout = attention_rollout(weights, num_prefix_tokens=prefix, grid=(GRID, GRID))
    hits = (rollout.reshape(100, -1).argmax(-1) == where).mean()
    assert hits >= 0.8, f"rollout peaks on the deciding patch for only {hits:.0%} of images"
    relevance = class_relevance(trained, x)
    assert relevance.shape == (100, GRID, GRID)
    hits = (relevance.reshape(100, -1).argmax(-1) == where).mean()
    assert hits >= 0.8, f"gradient-weighted map peaks on the deciding patch for only {hits:.0%}"


def test_class_relevance_batch_equals_single_images(trained):
    x, _, _ = one_patch_images(3, np.random.default_rng(7))
    batch = class_relevance(trained, x, classes=1)
    single = np.concatenate([class_relevance(trained, x[i:i + 1], classes=1) for i in range(3)])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-6)
