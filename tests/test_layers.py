"""The shared building blocks (vit/layers.py): the Transformer Block's pre-norm and post-norm
orderings, a causal Block stack on the KV cache, and the MLP, stochastic depth and LayerScale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vit.attention import KVCache
from vit.layers import Block, DropPath, LayerScale, Mlp

B, T, D, H = 2, 6, 32, 4


def block(norm_first: bool, layer_scale_init: float | None = None, seed: int = 0) -> Block:
    """A Block in eval mode with non-trivial weights, biases and norm parameters."""
    torch.manual_seed(seed)
    b = Block(D, H, mlp_hidden=2 * D, norm_first=norm_first, layer_scale_init=layer_scale_init)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return b.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layer_scale_init", [None, 0.5])
def test_pre_norm_block_is_two_residual_branches_on_normed_inputs(x: torch.Tensor,
                                                                  layer_scale_init: float | None) -> None:
    b = block(norm_first=True, layer_scale_init=layer_scale_init)
    with torch.no_grad():
        h = x + b.ls1(b.attn(b.norm1(x)).x)
        expected = h + b.ls2(b.mlp(b.norm2(h)))
        out = b(x)
    assert out.weights is None and out.cache is None
    torch.testing.assert_close(out.x, expected, atol=1e-6, rtol=1e-6)
    if layer_scale_init is not None:  # the branches are scaled: without LayerScale the output differs
        h_plain = x + b.attn(b.norm1(x)).x
        assert not torch.allclose(out.x, h_plain + b.mlp(b.norm2(h_plain)), atol=1e-3)


def test_post_norm_block_normalizes_after_each_residual_sum(x: torch.Tensor) -> None:
    b = block(norm_first=False)
    with torch.no_grad():
        h = b.norm1(x + b.attn(x).x)
        expected = b.norm2(h + b.mlp(h))
        out = b(x, return_attention=True)
        pre = x + b.attn(b.norm1(x)).x
        pre = pre + b.mlp(b.norm2(pre))
    torch.testing.assert_close(out.x, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out.x, pre, atol=1e-3)  # not the pre-norm ordering
    # every output token is layer-normed: zero mean, unit variance (up to the affine parameters)
    plain = Block(D, H, mlp_hidden=2 * D, norm_first=False).eval()
    y = plain(x).x
    torch.testing.assert_close(y.mean(-1), torch.zeros(B, T), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(B, T), atol=1e-3, rtol=0)
    assert out.weights.shape == (B, H, T, T)


@pytest.mark.parametrize("norm_first", [True, False])
def test_causal_block_stack_on_the_kv_cache_equals_full_recompute(x: torch.Tensor, norm_first: bool) -> None:
    """A decoder-only model: a stack of causal Blocks, decoded one token at a time on the cache."""
    stack = [block(norm_first, seed=i) for i in range(3)]
    with torch.no_grad():
        full, full_weights = x, []
        for b in stack:
            out = b(full, causal=True, return_attention=True)
            full = out.x
            full_weights.append(out.weights)
        caches: list[KVCache | None] = [None] * len(stack)
        steps = []
        for t in range(T):
            h = x[:, t : t + 1]
            for i, b in enumerate(stack):
                out = b(h, causal=True, cache=caches[i], use_cache=True, return_attention=True)
                h, caches[i] = out.x, out.cache
                assert out.weights.shape == (B, H, 1, t + 1)  # (B, H, Tq, P + Tq)
                torch.testing.assert_close(out.weights[:, :, 0], full_weights[i][:, :, t, : t + 1],
                                           atol=1e-6, rtol=1e-5)
            steps.append(h)
        # a prefix, then the rest at once (several new positions on a cache)
        h_prefix, h_rest = x[:, :2], x[:, 2:]
        for b in stack:
            first = b(h_prefix, causal=True, use_cache=True)
            rest = b(h_rest, causal=True, cache=first.cache)
            h_prefix, h_rest = first.x, rest.x
    assert all(c.key.shape == (B, H, T, D // H) for c in caches)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([h_prefix, h_rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_block_padding_mask_hides_padded_tokens(x: torch.Tensor) -> None:
    from vit.attention import padding_mask

    b = block(norm_first=True)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, 4:] = False
    noisy = x.clone()
    noisy[0, 4:] = torch.randn(2, D) * 50
    with torch.no_grad():
        a, c = b(x, mask=padding_mask(keep)), b(noisy, mask=padding_mask(keep))
    torch.testing.assert_close(a.x[0, :4], c.x[0, :4])
    torch.testing.assert_close(a.x[1], c.x[1])


def test_mlp_dropouts_and_activation() -> None:
    mlp = Mlp(8, 16, activation=nn.ReLU, drop=(0.25, 0.5))
    assert (mlp.drop1.p, mlp.drop2.p) == (0.25, 0.5) and isinstance(mlp.act, nn.ReLU)
    same = Mlp(8, 16, drop=0.1)
    assert (same.drop1.p, same.drop2.p) == (0.1, 0.1) and isinstance(same.act, nn.GELU)
    z = torch.randn(3, 8)
    same.eval()
    torch.testing.assert_close(same(z), same.fc2(same.act(same.fc1(z))))
    inner = Block(D, H, mlp_hidden=2 * D, proj_drop=0.3, mlp_drop=0.0)
    assert (inner.mlp.drop1.p, inner.mlp.drop2.p) == (0.0, 0.3)
    default = Block(D, H, mlp_hidden=2 * D, proj_drop=0.3)  # timm: proj_drop for both
    assert (default.mlp.drop1.p, default.mlp.drop2.p) == (0.3, 0.3)


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    torch.manual_seed(0)
    z = torch.ones(400, 3, 4)
    dp = DropPath(0.25)
    out = dp.train()(z)
    per_sample = out.flatten(1)
    kept = (per_sample != 0).all(1)
    assert torch.equal(kept, (per_sample != 0).any(1))  # all of a sample or none
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert 0.6 < kept.float().mean() < 0.9
    assert torch.equal(dp.eval()(z), z) and torch.equal(DropPath(0.0).train()(z), z)
    assert "p=0.25" in repr(dp)


def test_layer_scale_keeps_the_stream_dtype() -> None:
    ls = LayerScale(4, 0.1)
    z = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    out = ls(z)
    assert out.dtype == torch.bfloat16 and ls.gamma.dtype == torch.float32
    torch.testing.assert_close(out.float(), (z.float() * 0.1), atol=1e-2, rtol=1e-2)
