"""Greedy decoding and beam search: cache = no cache, beam 1 = greedy, EOS handling, and a
tiny model that overfits toy pairs decodes them exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_seq2seq import BOS, EOS, PAD, rand_ids, tiny_model

from vit.decoding import beam_search, greedy_decode
from vit.seq2seq import Seq2Seq, Seq2SeqConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def check_eos_and_padding(tokens: torch.Tensor) -> None:
    for row in tokens.tolist():
        assert EOS in row, row
        end = row.index(EOS)
        assert all(t == PAD for t in row[end + 1 :]), row
        assert PAD not in row[:end] and BOS not in row[:end], row


def test_greedy_cache_equals_no_cache_and_weights() -> None:
    model = tiny_model()
    src = rand_ids(3, 6, 23)
    src[2, 3:] = PAD
    fast = greedy_decode(model, src, max_len=9, min_len=4, need_weights=True)
    slow = greedy_decode(model, src, max_len=9, min_len=4, use_cache=False, need_weights=True)
    assert torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.scores, slow.scores)
    check_eos_and_padding(fast.tokens)
    assert (fast.tokens != EOS)[:, :4].all()  # min_len
    t = fast.tokens.shape[1]
    for a, b in zip(fast.cross_weights, slow.cross_weights, strict=True):
        assert a.shape == (3, 4, t, 6)  # (B, H, T, S)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.all(fast.cross_weights[0][2, :, :, 3:] == 0)


def test_greedy_picks_the_argmax_and_scores_its_log_probability() -> None:
    model = tiny_model(seed=1)
    src = rand_ids(2, 5, 23, seed=2)
    out = greedy_decode(model, src, max_len=20)
    tgt_in = torch.cat([torch.full((2, 1), BOS), out.tokens[:, :-1]], dim=1)
    logp = F.log_softmax(model(src, tgt_in), -1)  # (B, T, V)
    keep = out.tokens != PAD
    picked = logp.gather(2, out.tokens[..., None])[..., 0]  # (B, T)
    torch.testing.assert_close((picked * keep).sum(1), out.scores, atol=1e-4, rtol=1e-4)
    allowed = logp.clone()
    allowed[..., [PAD, BOS]] = float("-inf")
    free = keep.clone()
    free[:, 19:] = False  # the last allowed step forces EOS
    assert torch.equal(allowed.argmax(-1)[free], out.tokens[free])


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_beam_width_one_equals_greedy(length_penalty: float) -> None:
    model = tiny_model(seed=3)
    src = rand_ids(4, 7, 23, seed=9)
    src[1, 4:] = PAD
    greedy = greedy_decode(model, src, max_len=12, min_len=3)
    beam = beam_search(model, src, beam_size=1, length_penalty=length_penalty, max_len=12, min_len=3)
    assert torch.equal(beam.tokens, greedy.tokens)


def test_beam_cache_equals_no_cache_and_is_at_least_as_good_as_greedy() -> None:
    model = tiny_model(seed=4)
    src = rand_ids(3, 6, 23, seed=10)
    src[0, 3:] = PAD
    fast = beam_search(model, src, beam_size=4, length_penalty=0.0, max_len=10, need_weights=True)
    slow = beam_search(model, src, beam_size=4, length_penalty=0.0, max_len=10, use_cache=False,
                       need_weights=True)
    assert torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.scores, slow.scores)
    for a, b in zip(fast.cross_weights, slow.cross_weights, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    check_eos_and_padding(fast.tokens)
    greedy = greedy_decode(model, src, max_len=10)
    assert torch.all(fast.scores >= greedy.scores - 1e-5)  # alpha=0: raw log-probabilities
    # the beam's weights are those of the returned hypothesis: rows sum to 1 up to its EOS
    lengths = (fast.tokens != PAD).sum(1)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(fast.cross_weights[0][i, :, :n].sum(-1), torch.ones(4, n))


def test_decoding_argument_errors() -> None:
    model = tiny_model()
    src = rand_ids(1, 4, 23)
    with pytest.raises(ValueError, match="max_len must be in"):
        greedy_decode(model, src, max_len=25)
    with pytest.raises(ValueError, match="min_len"):
        greedy_decode(model, src, max_len=5, min_len=5)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, beam_size=0)
    with pytest.raises(ValueError, match="source token id 99"):
        greedy_decode(model, torch.tensor([[5, 99]]))


def toy_pairs() -> list[tuple[list[int], list[int]]]:
    """Six source sentences and their 'translations' (reversed, +1, varying lengths)."""
    g = torch.Generator().manual_seed(0)
    pairs = []
    for n in (3, 4, 5, 5, 6, 7):
        src = (torch.randperm(15, generator=g)[:n] + 3).tolist()  # distinct tokens 3..17
        pairs.append((src + [EOS], [t + 1 for t in reversed(src)] + [EOS]))
    return pairs


def pad_batch(seqs: list[list[int]]) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (n - len(s)) for s in seqs])


def test_tiny_model_overfits_toy_pairs_and_decodes_them_exactly() -> None:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=19, tgt_vocab_size=19, pad_id=PAD, bos_id=BOS, eos_id=EOS, dim=32,
                        num_heads=4, enc_depth=2, dec_depth=2, mlp_ratio=2.0, dropout=0.0, max_len=16,
                        share_embeddings=True)
    model = Seq2Seq(cfg)
    pairs = toy_pairs()
    src = pad_batch([s for s, _ in pairs])
    tgt_in = pad_batch([[BOS] + t[:-1] for _, t in pairs])
    tgt_out = pad_batch([t for _, t in pairs])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, 19), tgt_out.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    model.eval()
    for decoded in (greedy_decode(model, src), beam_search(model, src, beam_size=3)):
        assert torch.equal(decoded.tokens[:, : tgt_out.shape[1]], tgt_out)
        assert torch.all(decoded.tokens[:, tgt_out.shape[1]:] == PAD)


def test_decode_benchmark_table_rows() -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py"
    spec = importlib.util.spec_from_file_location("benchmarks_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(tiny_model(), batch=2, lengths={"short": 4, "long": 10}, beam=2, repeats=1)
    assert [(r["sentences"], r["method"]) for r in rows] == [
        ("short (4 tok)", "greedy"), ("short (4 tok)", "beam 2"), ("long (10 tok)", "greedy"),
        ("long (10 tok)", "beam 2")]
    assert all(r["cache"] > 0 and r["no cache"] > 0 for r in rows)
