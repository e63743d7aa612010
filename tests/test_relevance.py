"""Relevance maps of a PyTorch ViT (vit/relevance.py): on images whose class is decided by one
patch, a briefly trained ViT's maps peak there; batches equal single images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GRID, PATCH, one_patch_images, train_one_patch_vit

from vit.relevance import class_relevance, forward_with_attention, logit_offset, patch_grid, token_logits
from vit.rollout import attention_rollout
from vit.vit import ViT, ViTConfig


@pytest.fixture(scope="module", params=[True, False], ids=["class-token", "avg-pool"])
def trained(request: pytest.FixtureRequest) -> ViT:
    return train_one_patch_vit(request.param)


def test_maps_peak_on_the_deciding_patch(trained: ViT) -> None:
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


def test_class_relevance_batch_equals_single_images(trained: ViT) -> None:
    x, _, _ = one_patch_images(3, np.random.default_rng(7))
    batch = class_relevance(trained, x, classes=1)
    single = np.concatenate([class_relevance(trained, x[i:i + 1], classes=1) for i in range(3)])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-6)


def test_forward_with_attention_shapes_and_no_gradients(trained: ViT) -> None:
    x, _, _ = one_patch_images(2, np.random.default_rng(8))
    logits, weights = forward_with_attention(trained, x)
    n = trained.num_prefix_tokens + GRID * GRID
    assert logits.shape == (2, 3) and not logits.requires_grad
    assert isinstance(weights, np.ndarray) and weights.shape == (2, 2, 2, n, n)  # (B, L, H, N, N)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    before = [None if p.grad is None else p.grad.clone() for p in trained.parameters()]
    class_relevance(trained, x)
    for p, g in zip(trained.parameters(), before, strict=True):  # no gradients accumulated on the model
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_patch_grid_rounds_up() -> None:
    model = ViT(ViTConfig(image_size=16, patch_size=PATCH, dim=16, depth=1, num_heads=2, num_classes=2,
                          dynamic_img_pad=True))
    assert patch_grid(model, torch.zeros(1, 3, 16, 16)) == (4, 4)
    assert patch_grid(model, torch.zeros(1, 3, 17, 30)) == (5, 8)


@pytest.mark.parametrize("fc_norm,reg_tokens", [(True, 0), (False, 0), (True, 2)])
def test_token_logits_split_every_logit_exactly(fc_norm: bool, reg_tokens: int) -> None:
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=5,
                       class_token=False, global_pool="avg", fc_norm=fc_norm, reg_tokens=reg_tokens)
    model = ViT(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norms and biases
            p.add_(0.1 * torch.randn_like(p))
        tokens, _ = model.forward_features(torch.randn(3, 3, 16, 16))
        shares = token_logits(model, tokens)  # (B, Gh*Gw, K)
        assert shares.shape == (3, 16, 5)
        torch.testing.assert_close(shares.sum(dim=1) + logit_offset(model), model.forward_head(tokens),
                                   atol=1e-5, rtol=1e-5)


def test_token_logits_needs_average_pooling() -> None:
    model = ViT(ViTConfig(image_size=16, patch_size=4, dim=32, depth=1, num_heads=2, num_classes=5))
    with pytest.raises(ValueError, match="average-pooling"):
        token_logits(model, torch.randn(1, 17, 32))
