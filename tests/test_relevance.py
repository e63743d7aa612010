"""Relevance maps of a PyTorch ViT (vit/relevance.py): on images whose class is decided by one
patch, a briefly trained ViT's maps peak there; batches equal single images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GRID, PATCH, one_patch_images, train_one_patch_vit
from torch import Tensor

from vit.attention import MultiHeadAttention
from vit.relevance import (
    class_relevance,
    forward_with_attention,
    forward_with_contributions,
    logit_offset,
    patch_grid,
    token_logits,
)
from vit.rollout import attention_rollout, contribution_rollout
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


def test_head_outputs_mixed_by_the_weights_are_the_attention_output() -> None:
    torch.manual_seed(1)
    attn = MultiHeadAttention(12, 3).eval()
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        out = attn(x, return_attention=True)
        mixed = torch.einsum("bhij,bhjd->bid", out.weights, attn.head_outputs(x)) + attn.proj.bias
    torch.testing.assert_close(mixed, out.x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="self-attention layers only"):
        MultiHeadAttention(12, 3, cross=True).head_outputs(x)


def _contributions_by_pairs(model: ViT, images: Tensor) -> Tensor:
    """ALTI written out token pair by token pair, from the blocks' parts: (B, L, N, N)."""
    x = model.embed(images)
    b, n, d = x.shape
    layers = []
    for block in model.blocks:
        h = block.norm1(x)
        q, k, v = block.attn.qkv(h).view(b, n, 3, block.attn.num_heads, -1).unbind(2)  # (B, N, H, Dh)
        heads = block.attn.num_heads
        scores = torch.einsum("bihk,bjhk->bhij", q, k) / k.shape[-1] ** 0.5
        w = scores.softmax(-1)  # (B, H, N, N)
        wo = block.attn.proj.weight.view(d, heads, -1)  # (D, H, Dh)
        y = x + block.ls1(block.attn(h).x)
        c = torch.zeros(b, n, n)
        for i in range(n):
            for j in range(n):
                t = sum(w[:, hh, i, j, None] * (v[:, j, hh] @ wo[:, hh].T) for hh in range(heads))
                t = block.ls1(t) + (x[:, i] if i == j else 0.0)  # (B, D): T_i(x_j)
                c[:, i, j] = (y[:, i].norm(p=1, dim=-1) - (y[:, i] - t).norm(p=1, dim=-1)).clamp(min=0)
        layers.append(c / c.sum(-1, keepdim=True))
        x = block(x).x
    return torch.stack(layers, dim=1)


def test_contributions_equal_the_pairwise_definition() -> None:
    torch.manual_seed(2)
    model = ViT(ViTConfig(image_size=8, patch_size=4, dim=16, depth=2, num_heads=2, num_classes=3,
                          class_token=False, global_pool="avg", reg_tokens=1, layer_scale_init=0.5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        images = torch.randn(2, 3, 8, 8)
        tokens, weights, contributions = forward_with_contributions(model, images)
        want_tokens, want_weights = model.forward_features(images, return_attention=True)
        want = _contributions_by_pairs(model, images)
    assert contributions.shape == (2, 2, 5, 5)  # (B, L, N, N): 1 register + 4 patches
    torch.testing.assert_close(tokens, want_tokens)
    for got, w in zip(weights, want_weights, strict=True):
        torch.testing.assert_close(got, w)
    torch.testing.assert_close(contributions, want, atol=1e-5, rtol=1e-4)
    assert (contributions >= 0).all()
    torch.testing.assert_close(contributions.sum(-1), torch.ones(2, 2, 5))


def test_contribution_rollout_peaks_on_the_deciding_patch(trained: ViT) -> None:
    x, _, where = one_patch_images(100, np.random.default_rng(123), with_empty=False)
    with torch.inference_mode():
        tokens, _, contributions = forward_with_contributions(trained, x)
        shares = token_logits(trained, tokens).numpy() if trained.config.global_pool == "avg" else None
    pool = trained.config.global_pool
    relevance = contribution_rollout(contributions.numpy(), shares, grid=(GRID, GRID),
                                     num_prefix_tokens=trained.num_prefix_tokens, pool=pool)
    hits = (relevance.reshape(100, -1).argmax(-1) == where).mean()
    assert hits >= 0.8, f"contribution rollout peaks on the deciding patch for only {hits:.0%} of images"


def test_contribution_rollout_reads_as_rollout_and_weighs_the_readout() -> None:
    rng = np.random.default_rng(0)
    c = rng.random((2, 3, 5, 5))  # (B, L, N, N): 1 prefix token + a 2x2 grid
    c /= c.sum(-1, keepdims=True)
    joint = c[:, 2] @ c[:, 1] @ c[:, 0]  # (B, N, N)
    got = contribution_rollout(c, num_prefix_tokens=1, grid=(2, 2), pool="token")
    np.testing.assert_allclose(got, joint[:, 0, 1:].reshape(2, 2, 2))
    got = contribution_rollout(c, num_prefix_tokens=1, grid=(2, 2), pool="avg")
    np.testing.assert_allclose(got, joint[:, 1:, 1:].mean(1).reshape(2, 2, 2))
    shares = rng.standard_normal((2, 4, 3))  # (B, Gh*Gw, K)
    shares[:, 0] = 7.0  # a token that moves every class alike moves nothing softmax sees
    reach = np.linalg.norm(shares - shares.mean(2, keepdims=True), axis=2)  # (B, 4)
    assert (reach[:, 0] == 0).all()
    want = np.einsum("bi,bij->bj", reach / reach.sum(1, keepdims=True), joint[:, 1:, 1:])
    got = contribution_rollout(c, shares, num_prefix_tokens=1, grid=(2, 2), pool="avg")
    np.testing.assert_allclose(got, want.reshape(2, 2, 2))
    with pytest.raises(ValueError, match=r"shape \(B, L, N, N\)"):
        contribution_rollout(c[0], num_prefix_tokens=1, grid=(2, 2))
    with pytest.raises(ValueError, match=r"token_logits must have shape \(2, 4, K\)"):
        contribution_rollout(c, shares[:, :3], num_prefix_tokens=1, grid=(2, 2), pool="avg")
