"""The attention core (vit/attention.py) against torch.nn.MultiheadAttention, its own
invariants, and the per-model settings of configure_attention."""

from __future__ import annotations

import pytest
import torch
from conftest import rand_ids, tiny_model
from torch import nn

from vit.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    configure_attention,
    padding_mask,
    scaled_dot_product,
)
from vit.vit import ViT, ViTConfig

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
    """x (B, T, D), a context (B, S, D) and its keep-mask (B, S) with padding in two rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=g)
    ctx = torch.randn(B, S, D, generator=g)
    keep = torch.ones(B, S, dtype=torch.bool)
    keep[0, 3:] = False
    keep[2, 1:] = False
    return x, ctx, keep


@pytest.mark.parametrize("return_attention", [False, True])
def test_self_attention_matches_torch(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                                      return_attention: bool) -> None:
    x, _, _ = inputs
    attn = MultiHeadAttention(D, H).eval()
    ref = copy_to_torch(attn)
    ours = attn(x, return_attention=return_attention)
    theirs, w = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours.x, theirs, atol=1e-6, rtol=1e-5)
    if return_attention:
        torch.testing.assert_close(ours.weights, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("return_attention", [False, True])
def test_causal_self_attention_matches_torch(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                                             return_attention: bool) -> None:
    x, _, _ = inputs
    attn = MultiHeadAttention(D, H).eval()
    ref = copy_to_torch(attn)
    ours = attn(x, causal=True, return_attention=return_attention)
    blocked = ~causal_mask(T, T)  # nn.MultiheadAttention: True = blocked
    theirs, w = ref(x, x, x, attn_mask=blocked, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours.x, theirs, atol=1e-6, rtol=1e-5)
    if return_attention:
        torch.testing.assert_close(ours.weights, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("return_attention", [False, True])
def test_cross_attention_with_padding_matches_torch(inputs: tuple[torch.Tensor, torch.Tensor,
                                                    torch.Tensor], return_attention: bool) -> None:
    x, ctx, keep = inputs
    attn = MultiHeadAttention(D, H, cross=True).eval()
    ref = copy_to_torch(attn)
    ours = attn(x, ctx, mask=padding_mask(keep), return_attention=return_attention)
    theirs, w = ref(x, ctx, ctx, key_padding_mask=~keep, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours.x, theirs, atol=1e-6, rtol=1e-5)
    if return_attention:
        torch.testing.assert_close(ours.weights, w, atol=1e-6, rtol=1e-5)
        assert torch.all(ours.weights[0, :, :, 3:] == 0)


def test_fast_path_equals_explicit_path(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    x, ctx, keep = inputs
    self_attn = MultiHeadAttention(D, H).eval()
    cross = MultiHeadAttention(D, H, cross=True).eval()
    additive = torch.randn(T, T)
    for kwargs in ({}, {"causal": True}, {"mask": additive}, {"mask": additive, "causal": True}):
        fast = self_attn(x, **kwargs)
        slow = self_attn(x, return_attention=True, **kwargs)
        assert fast.weights is None
        torch.testing.assert_close(fast.x, slow.x, atol=1e-6, rtol=1e-5)
    mask = padding_mask(keep)
    torch.testing.assert_close(cross(x, ctx, mask=mask).x, cross(x, ctx, mask=mask, return_attention=True).x,
                               atol=1e-6, rtol=1e-5)


def test_weights_are_distributions(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    x, _, _ = inputs
    w = MultiHeadAttention(D, H)(x, return_attention=True).weights
    assert w.shape == (B, H, T, T)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))


@pytest.mark.parametrize("return_attention", [False, True])
def test_causal_mask_leaks_nothing(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                                   return_attention: bool) -> None:
    x, _, _ = inputs
    attn = MultiHeadAttention(D, H).eval()
    before = attn(x, causal=True, return_attention=return_attention).x
    changed = x.clone()
    changed[:, 4:] = torch.randn_like(changed[:, 4:]) * 10
    after = attn(changed, causal=True, return_attention=return_attention).x
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_padded_keys_change_nothing(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    x, ctx, keep = inputs
    attn = MultiHeadAttention(D, H, cross=True).eval()
    mask = padding_mask(keep)
    noisy = ctx.clone()
    noisy[~keep] = torch.randn_like(noisy[~keep]) * 100
    torch.testing.assert_close(attn(x, ctx, mask=mask).x, attn(x, noisy, mask=mask).x)


def test_kv_cache_equals_full_recompute(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
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
    rest = self_attn(x[:, 3:], causal=True, cache=first.cache, return_attention=True)
    torch.testing.assert_close(torch.cat([first.x, rest.x], dim=1), full, atol=1e-6, rtol=1e-5)
    # cross-attention: the projected context is reused from the cache
    cross = MultiHeadAttention(D, H, cross=True).eval()
    primed = cross(x[:, :1], ctx, use_cache=True)
    torch.testing.assert_close(cross(x, cache=primed.cache).x, cross(x, ctx).x)


def test_clear_errors(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    x, ctx, _ = inputs
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="context"):
        MultiHeadAttention(D, H)(x, ctx)
    with pytest.raises(ValueError, match="context or a cache"):
        MultiHeadAttention(D, H, cross=True)(x)
    with pytest.raises(ValueError, match="boolean"):
        padding_mask(torch.ones(2, 3))


def test_causal_mask_is_bottom_right_aligned() -> None:
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(1, 5).all()


def test_scaled_dot_product_is_softmax_of_scaled_scores(inputs: tuple[torch.Tensor, torch.Tensor,
                                                        torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, n, D // H, generator=g) for n in (T, S, S))
    _, _, keep = inputs
    out, w = scaled_dot_product(q, k, v, padding_mask(keep))
    scores = q @ k.transpose(-2, -1) / (D // H) ** 0.5
    expected = scores.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(out, expected @ v)
    additive = torch.randn(T, S, generator=g)
    torch.testing.assert_close(scaled_dot_product(q, k, v, additive)[1], (scores + additive).softmax(-1))


def _randomized(model: nn.Module) -> nn.Module:
    """Non-trivial biases and weights (the zero-initialised biases would hide a wrong slice)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _settings(model: nn.Module) -> list[tuple[bool, bool, bool]]:
    return [(m.cross, m.fused, m.split_qkv) for m in model.modules() if isinstance(m, MultiHeadAttention)]


def test_configure_attention_paths_give_the_default_outputs_on_a_vit() -> None:
    torch.manual_seed(0)
    model = _randomized(ViT(ViTConfig(image_size=32, patch_size=8, dim=48, depth=2, num_heads=3,
                                      num_classes=5)))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        default = model(x)
        configure_attention(model, fused=False)
        assert _settings(model) == [(False, False, False)] * 2
        explicit = model(x)
        configure_attention(model, fused=True, split_qkv=True)
        assert _settings(model) == [(False, True, True)] * 2
        split, split_weights = model(x, return_attention=True)
        configure_attention(model)  # None leaves both settings as they are
        assert _settings(model) == [(False, True, True)] * 2
        configure_attention(model, split_qkv=False)
        _, weights = model(x, return_attention=True)
    torch.testing.assert_close(explicit, default, atol=1e-6, rtol=0)
    torch.testing.assert_close(split, default, atol=1e-6, rtol=0)
    for a, b in zip(split_weights, weights, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_split_qkv_leaves_cross_attention_alone_and_keeps_the_outputs(one_thread: None) -> None:
    model = _randomized(tiny_model())
    src, tgt = rand_ids(2, 6, 23), rand_ids(2, 5, 19, seed=2)
    src[1, 4:] = 0  # padding
    with torch.no_grad():
        default = model(src, tgt)
        enc = model.encode(src)
        cached = model.decode(tgt[:, :3], enc, use_cache=True)
        step = model.decode(tgt[:, 3:], enc, cache=cached.cache, use_cache=True)
        configure_attention(model, split_qkv=True)
        settings = _settings(model)
        split = model(src, tgt)
        cached_split = model.decode(tgt[:, :3], enc, use_cache=True)
        step_split = model.decode(tgt[:, 3:], enc, cache=cached_split.cache, use_cache=True)
        configure_attention(model, fused=False)
        explicit = model(src, tgt)
    # encoder self-attention (2 layers), then decoder self- and cross-attention (2 layers each)
    assert [s for s in settings if not s[0]] == [(False, True, True)] * 4
    assert [s for s in settings if s[0]] == [(True, True, False)] * 2
    # logits of order 1: the same to 1e-6, absolute and relative
    torch.testing.assert_close(split, default, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(explicit, default, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(step_split.logits, step.logits, atol=1e-6, rtol=1e-6)


def test_misuse_is_a_clear_error(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    x, ctx, _ = inputs
    with pytest.raises(ValueError, match="self-attention only"):
        MultiHeadAttention(D, H, cross=True)(x, ctx, causal=True)
    with pytest.raises(ValueError, match="cross-attention layers only"):
        MultiHeadAttention(D, H).project_context(ctx)
