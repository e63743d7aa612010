"""The attention core against torch.nn.MultiheadAttention, and its own invariants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vit.attention import KVCache, MultiHeadAttention, causal_mask, padding_mask

B, T, S, D, H = 3, 7, 5, 32, 4


def copy_to_torch(attn: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(D, H, batch_first=True)
    with torch.no_grad():
        if attn.cross:
            ref.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.kv.weight]))
            ref.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.kv.bias]))
        else:
            ref.in_proj_weight.copy_(attn.qkv.weight)
            ref.in_proj_bias.copy_(attn.qkv.bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    return ref.eval()


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=g)
    ctx = torch.randn(B, S, D, generator=g)
    keep = torch.ones(B, S, dtype=torch.bool)
    keep[0, 3:] = False
    keep[2, 1:] = False
    return x, ctx, keep


@pytest.mark.parametrize("need_weights", [False, True])
def test_self_attention_matches_torch(inputs, need_weights: bool) -> None:
    x, _, _ = inputs
    attn = MultiHeadAttention(D, H).eval()
    ref = copy_to_torch(attn)
    ours = attn(x, need_weights=need_weights)
    theirs, w = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours.x, theirs, atol=1e-6, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(ours.weights, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_self_attention_matches_torch(inputs, need_weights: bool) -> None:
    x, _, _ = inputs
    attn = MultiHeadAttention(D, H).eval()
    ref = copy_to_torch(attn)
    ours = attn(x, causal=True, need_weights=need_weights)
    blocked = ~causal_mask(T, T)  # nn.MultiheadAttention: True = blocked
    theirs, w = ref(x, x, x, attn_mask=blocked, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours.x, theirs, atol=1e-6, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(ours.weights, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_cross_attention_with_padding_matches_torch(inputs, need_weights: bool) -> None:
    x, ctx, keep = inputs
    attn = MultiHeadAttention(D, H, cross=True).eval()
    ref = copy_to_torch(attn)
    ours = attn(x, ctx, mask=padding_mask(keep), need_weights=need_weights)
    theirs, w = ref(x, ctx, ctx, key_padding_mask=~keep, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours.x, theirs, atol=1e-6, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(ours.weights, w, atol=1e-6, rtol=1e-5)
        assert torch.all(ours.weights[0, :, :, 3:] == 0)


def test_fast_path_equals_explicit_path(inputs) -> None:
    x, ctx, keep = inputs
    self_attn = MultiHeadAttention(D, H).eval()
    cross = MultiHeadAttention(D, H, cross=True).eval()
    additive = torch.randn(T, T)
    for kwargs in ({}, {"causal": True}, {"mask": additive}, {"mask": additive, "causal": True}):
        fast = self_attn(x, **kwargs)
        slow = self_attn(x, need_weights=True, **kwargs)
        assert fast.weights is None
        torch.testing.assert_close(fast.x, slow.x, atol=1e-6, rtol=1e-5)
    mask = padding_mask(keep)
    torch.testing.assert_close(cross(x, ctx, mask=mask).x, cross(x, ctx, mask=mask, need_weights=True).x,
                               atol=1e-6, rtol=1e-5)


def test_weights_are_distributions(inputs) -> None:
    x, _, _ = inputs
    w = MultiHeadAttention(D, H)(x, need_weights=True).weights
    assert w.shape == (B, H, T, T)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))


@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_mask_leaks_nothing(inputs, need_weights: bool) -> None:
    x, _, _ = inputs
    attn = MultiHeadAttention(D, H).eval()
    before = attn(x, causal=True, need_weights=need_weights).x
    changed = x.clone()
    changed[:, 4:] = torch.randn_like(changed[:, 4:]) * 10
    after = attn(changed, causal=True, need_weights=need_weights).x
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_padded_keys_change_nothing(inputs) -> None:
    x, ctx, keep = inputs
    attn = MultiHeadAttention(D, H, cross=True).eval()
    mask = padding_mask(keep)
    noisy = ctx.clone()
    noisy[~keep] = torch.randn_like(noisy[~keep]) * 100
    torch.testing.assert_close(attn(x, ctx, mask=mask).x, attn(x, noisy, mask=mask).x)


def test_kv_cache_equals_full_recompute(inputs) -> None:
    x, ctx, _ = inputs
    self_attn = MultiHeadAttention(D, H).eval()
    full = self_attn(x, causal=True).x
    cache: KVCache | None = None
    steps = []
    for t in range(T):  # one token at a time, as a decoder does
        step = self_attn(x[:, t : t + 1], causal=True, cache=cache, use_cache=True)
        cache = step.cache
        steps.append(step.x)
    assert cache is not None and cache.key.shape == (B, H, T, D // H)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=1e-5)
    # two chunks: a prefix, then several tokens at once (bottom-right causal alignment)
    first = self_attn(x[:, :3], causal=True, use_cache=True)
    rest = self_attn(x[:, 3:], causal=True, cache=first.cache, need_weights=True)
    torch.testing.assert_close(torch.cat([first.x, rest.x], dim=1), full, atol=1e-6, rtol=1e-5)
    # cross-attention: the projected context is reused from the cache
    cross = MultiHeadAttention(D, H, cross=True).eval()
    primed = cross(x[:, :1], ctx, use_cache=True)
    torch.testing.assert_close(cross(x, cache=primed.cache).x, cross(x, ctx).x)


def test_clear_errors(inputs) -> None:
    x, ctx, _ = inputs
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="context"):
        MultiHeadAttention(D, H)(x, ctx)
    with pytest.raises(ValueError, match="context or a cache"):
        MultiHeadAttention(D, H, cross=True)(x)
    with pytest.raises(ValueError, match="boolean"):
        padding_mask(torch.ones(2, 3))
