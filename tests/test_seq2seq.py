"""Invariants of the text encoder-decoder: cache = no cache, padding and future tokens change
nothing, input checks, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from vit.seq2seq import Seq2Seq, Seq2SeqConfig, load_seq2seq, save_seq2seq

PAD, BOS, EOS = 0, 1, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**overrides) -> Seq2SeqConfig:
    base = dict(src_vocab_size=23, tgt_vocab_size=19, pad_id=PAD, bos_id=BOS, eos_id=EOS, dim=32,
                num_heads=4, enc_depth=2, dec_depth=2, mlp_ratio=2.0, dropout=0.0, max_len=24)
    return Seq2SeqConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, **overrides) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(tiny_config(**overrides)).eval()


def rand_ids(b: int, n: int, vocab: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (b, n), generator=g)


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


def test_cross_weights_explicit_path_matches_and_ignores_padding() -> None:
    model = tiny_model()
    src, tgt = rand_ids(2, 6, 23), rand_ids(2, 4, 19, seed=7)
    src[0, 4:] = PAD
    enc = model.encode(src)
    plain = model.decode(tgt, enc)
    explicit = model.decode(tgt, enc, need_weights=True)
    torch.testing.assert_close(explicit.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert len(explicit.cross_weights) == 2
    for w in explicit.cross_weights:
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
        (dict(bos_id=PAD), "must differ"),
        (dict(share_embeddings=True), "joint vocabulary"),
        (dict(activation="tanh"), "activation"),
        (dict(dropout=1.0), "dropout"),
        (dict(enc_depth=0), "enc_depth must be positive"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_shared_and_tied_embeddings_round_trip(tmp_path) -> None:
    model = tiny_model(src_vocab_size=19, share_embeddings=True, tie_output=True)
    assert model.src_embed is model.tgt_embed
    assert model.head.weight is model.tgt_embed.weight
    n_untied = Seq2Seq(tiny_config(src_vocab_size=19, tie_output=False)).num_params()
    assert model.num_params() == n_untied - 2 * 19 * 32
    src, tgt = rand_ids(2, 5, 19), rand_ids(2, 4, 19, seed=8)
    path = tmp_path / "m.safetensors"
    save_seq2seq(model, {"src_tokenizer": "{}", "tgt_tokenizer": None, "val_bleu": None, "source": "test"},
                 path)
    loaded, record = load_seq2seq(path)
    assert record["config"] == model.config.to_dict()
    assert loaded.head.weight is loaded.tgt_embed.weight
    torch.testing.assert_close(loaded(src, tgt), model(src, tgt))


def test_load_rejects_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_seq2seq(tmp_path / "missing.ckpt")
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a translation checkpoint"):
        load_seq2seq(path)
