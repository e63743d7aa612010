"""Invariants of the text encoder-decoder (vit/seq2seq.py): cache = no cache, padding and
future tokens change nothing, the step interface of vit.decoding, input and config checks.
File formats are in test_checkpoint.py."""

from __future__ import annotations

import pytest
import torch
from conftest import BOS, PAD, rand_ids, tiny_config, tiny_model

from vit.errors import ConfigError
from vit.seq2seq import DecoderState, Seq2Seq, sinusoidal_positions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_decoding_equals_full_prefix(norm_first: bool) -> None:
    model = tiny_model(norm_first=norm_first)
    src, tgt = rand_ids(3, 7, 23), rand_ids(3, 6, 19, seed=2)
    src[1, 5:] = PAD
    full = model(src, tgt)  # (B, T, V)
    enc = model.encode(src)
    cache, steps = None, []
    for t in range(tgt.shape[1]):
        out = model.decode(tgt[:, t : t + 1], enc, cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache[0].self_attn.key.shape == (3, 4, 6, 8)  # (B, H, P, Dh)
    # a prefix of two tokens, then one more: a multi-token step on a cache works too
    out = model.decode(tgt[:, :2], enc, use_cache=True)
    out2 = model.decode(tgt[:, 2:4], enc, cache=out.cache, use_cache=True)
    torch.testing.assert_close(out2.logits, full[:, 2:4], atol=1e-5, rtol=1e-5)


def test_source_padding_changes_nothing() -> None:
    model = tiny_model()
    src, tgt = rand_ids(1, 5, 23), rand_ids(1, 4, 19, seed=3)
    ref = model(src, tgt)
    right = torch.cat([src, torch.full((1, 3), PAD)], dim=1)
    torch.testing.assert_close(model(right, tgt), ref, atol=1e-5, rtol=1e-5)
    # padding in a batch with a longer sentence: same logits for the short one
    other = rand_ids(1, 8, 23, seed=4)
    batch = torch.cat([right, other], dim=0)
    torch.testing.assert_close(model(batch, torch.cat([tgt, tgt]))[:1], ref, atol=1e-5, rtol=1e-5)


def test_target_padding_changes_nothing_before_it() -> None:
    model = tiny_model()
    src, tgt = rand_ids(2, 6, 23), rand_ids(2, 5, 19, seed=5)
    ref = model(src, tgt)
    padded = torch.cat([tgt, torch.full((2, 3), PAD)], dim=1)
    keep = padded != PAD
    out = model.decode(padded, model.encode(src), tgt_keep=keep).logits
    torch.testing.assert_close(out[:, :5], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(src, padded)[:, :5], ref, atol=1e-5, rtol=1e-5)


def test_future_target_token_changes_nothing_before_it() -> None:
    model = tiny_model()
    src, tgt = rand_ids(2, 6, 23), rand_ids(2, 6, 19, seed=6)
    ref = model(src, tgt)
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 3) % 16 + 3
    out = model(src, changed)
    torch.testing.assert_close(out[:, :4], ref[:, :4])
    assert not torch.allclose(out[:, 4:], ref[:, 4:])


def test_cross_attention_explicit_path_matches_and_ignores_padding() -> None:
    model = tiny_model()
    src, tgt = rand_ids(2, 6, 23), rand_ids(2, 4, 19, seed=7)
    src[0, 4:] = PAD
    enc = model.encode(src)
    plain = model.decode(tgt, enc)
    explicit = model.decode(tgt, enc, return_attention=True)
    torch.testing.assert_close(explicit.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert len(explicit.cross_attention) == 2
    for w in explicit.cross_attention:
        assert w.shape == (2, 4, 4, 6)  # (B, H, T, S)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 4))
        assert torch.all(w[0, :, :, 4:] == 0)


def test_out_of_range_ids_and_long_inputs_raise_clear_errors() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"source token id 23 is out of range \[0, 23\)"):
        model.encode(torch.tensor([[3, 23]]))
    with pytest.raises(ValueError, match=r"source token id -1"):
        model.encode(torch.tensor([[3, -1]]))
    enc = model.encode(torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match=r"target token id 19 is out of range \[0, 19\)"):
        model.decode(torch.tensor([[BOS, 19]]), enc)
    with pytest.raises(ValueError, match="source length 25 exceeds the model's max_len 24"):
        model.encode(torch.full((1, 25), 5))
    out = model.decode(torch.full((1, 24), 5), enc, use_cache=True)
    with pytest.raises(ValueError, match="target length 25 exceeds"):
        model.decode(torch.tensor([[5]]), enc, cache=out.cache)
    with pytest.raises(ValueError, match="integer"):
        model.encode(torch.zeros(1, 3))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(dim=30), "divisible by num_heads"),
        (dict(eos_id=19), "eos_id=19 is outside the target vocabulary"),
        (dict(pad_id=-1), "pad_id=-1 is outside the target vocabulary"),
        (dict(src_vocab_size=1, pad_id=1, bos_id=0), "pad_id=1 is outside the source vocabulary"),
        (dict(bos_id=PAD), "must differ"),
        (dict(share_embeddings=True), "joint vocabulary"),
        (dict(activation="tanh"), "activation"),
        (dict(dropout=1.0), "dropout"),
        (dict(enc_depth=0), "enc_depth must be positive"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_step_interface_with_and_without_cache_and_reorder() -> None:
    model = tiny_model(seed=2)
    src, tgt = rand_ids(3, 6, 23), rand_ids(3, 4, 19, seed=4)
    src[2, 3:] = PAD
    tokens = torch.cat([torch.full((3, 1), BOS), tgt], dim=1)  # (B, 5), BOS first
    with torch.no_grad():
        full = model.decode(tokens, model.encode(src), return_attention=True)
        state = model.start(src)
        assert isinstance(state, DecoderState) and state.cache is None and state.rows.tolist() == [0, 1, 2]
        for t in range(1, tokens.shape[1] + 1):
            cached = model.step(tokens[:, :t], state, return_attention=True)
            state = cached.state
            uncached = model.step(tokens[:, :t], model.start(src), use_cache=False, return_attention=True)
            torch.testing.assert_close(cached.logits, full.logits[:, t - 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(uncached.logits, cached.logits, atol=1e-5, rtol=1e-5)
            assert cached.attention.shape == (3, 2, 4, 6)  # (N, L, H, S)
            torch.testing.assert_close(cached.attention[:, 1], full.cross_attention[1][:, :, t - 1])
        assert state.cache[0].self_attn.key.shape == (3, 4, 5, 8)
        # rows kept, repeated and dropped, as beam search does: the same as decoding those rows
        index = torch.tensor([2, 0, 0])
        moved = model.reorder(state, index)
        assert moved.rows.tolist() == [2, 0, 0]
        nxt = torch.cat([tokens[index], torch.full((3, 1), 5)], dim=1)
        out = model.step(nxt, moved)
        ref = model.decode(nxt, model.encode(src[index])).logits[:, -1]
        torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
        same = model.reorder(state, torch.arange(3))  # every row keeps its source: nothing is copied
        assert same.encoded is state.encoded and same.cache[0].cross_attn is state.cache[0].cross_attn


def test_project_memory_is_every_layers_cross_attention_cache() -> None:
    model = tiny_model()
    src, tgt = rand_ids(2, 5, 23), rand_ids(2, 3, 19, seed=2)
    with torch.no_grad():
        enc = model.encode(src)
        out = model.decode(tgt, enc, use_cache=True)
        projected = model.project_memory(enc)
    assert len(projected) == 2
    for kv, layer in zip(projected, out.cache, strict=True):
        torch.testing.assert_close(kv.key, layer.cross_attn.key)
        torch.testing.assert_close(kv.value, layer.cross_attn.value)


def test_sinusoidal_positions_are_the_papers() -> None:
    table = sinusoidal_positions(10, 8)
    pos, i = 7, 2
    assert torch.isclose(table[pos, 2 * i], torch.sin(torch.tensor(pos / 10000 ** (2 * i / 8))))
    assert torch.isclose(table[pos, 2 * i + 1], torch.cos(torch.tensor(pos / 10000 ** (2 * i / 8))))
    assert Seq2Seq(tiny_config()).positions.shape == (24, 32)
