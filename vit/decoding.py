"""Greedy decoding and beam search for :class:`vit.seq2seq.Seq2Seq`, batched, on the KV cache.

Shape letters: B batch, K beam width, S source length, T generated length, V target
vocabulary, H heads, L decoder layers.

Both decoders feed the decoder one token per step and pass its :data:`DecoderCache`
back (``use_cache=False`` re-runs the whole prefix each step instead; it exists to
measure what the cache saves). They never emit ``pad`` or ``bos``, never emit ``eos``
before ``min_len`` tokens, and force ``eos`` at the last allowed step, so every output
ends with ``eos`` and is right-padded with ``pad`` after it.

Beam search: at each step the 2K best continuations are ranked by summed
log-probability; those ending in ``eos`` among the first K become finished hypotheses
(fairseq's rule), the first K others stay active. Finished hypotheses are scored with the
GNMT length penalty (Wu et al. 2016): ``score / ((5 + |Y|) / 6) ** length_penalty``, with
|Y| counting ``eos``; ``length_penalty=0`` compares raw log-probabilities, 1 is close to
per-token normalisation. Each sentence keeps its K best finished hypotheses and is done
when it has K and its best active beam, scored at its current length, is no better than
the worst of them (Hugging Face's default stopping rule; stopping at the first K finished,
as fairseq does, lets unlikely short hypotheses end the search before the likely ones).
With K=1 it returns exactly what greedy decoding returns.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .attention import KVCache
from .seq2seq import Decoded, DecoderCache, Encoded, LayerCache, Seq2Seq


class Generation(NamedTuple):
    """``tokens`` (B, T): generated ids without BOS, ending in EOS, right-padded with pad;
    ``scores`` (B,): summed log-probability (greedy) or length-penalised score (beam);
    ``cross_weights``: when asked for, one (B, H, T, S) tensor per decoder layer -- the
    cross-attention of the step that produced each token."""

    tokens: Tensor
    scores: Tensor
    cross_weights: tuple[Tensor, ...] | None


def default_max_len(model: Seq2Seq, src_ids: Tensor) -> int:
    """Generated tokens allowed by default: 2 S + 10, within the model's max_len."""
    return min(model.config.max_len, 2 * src_ids.shape[1] + 10)


def _steps(model: Seq2Seq, src_ids: Tensor, max_len: int | None, min_len: int) -> int:
    steps = default_max_len(model, src_ids) if max_len is None else max_len
    if not 1 <= steps <= model.config.max_len:
        raise ValueError(f"max_len must be in [1, {model.config.max_len}] (the model's max_len), got {steps}")
    if not 0 <= min_len < steps:
        raise ValueError(f"min_len must be in [0, max_len={steps}), got {min_len}")
    return steps


def _log_probs(model: Seq2Seq, logits: Tensor, step: int, min_len: int, last: bool) -> Tensor:
    """Next-token log-probabilities (N, V) with the decoding rules applied."""
    cfg = model.config
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    logp[:, cfg.pad_id] = float("-inf")
    logp[:, cfg.bos_id] = float("-inf")
    if step < min_len:
        logp[:, cfg.eos_id] = float("-inf")
    if last:
        eos = logp[:, cfg.eos_id].clone()
        logp.fill_(float("-inf"))
        logp[:, cfg.eos_id] = eos
    return logp


def _step(
    model: Seq2Seq, tokens: Tensor, encoded: Encoded, cache: DecoderCache | None, use_cache: bool,
    need_weights: bool,
) -> Decoded:
    """Decoder output for the newest position of ``tokens`` (N, t)."""
    if use_cache:
        return model.decode(tokens[:, -1:], encoded, cache=cache, use_cache=True, need_weights=need_weights)
    out = model.decode(tokens, encoded, need_weights=need_weights)  # the whole prefix again
    weights = None if out.cross_weights is None else tuple(w[:, :, -1:] for w in out.cross_weights)
    return Decoded(out.logits[:, -1:], None, weights)  # (N, 1, V)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq,
    src_ids: Tensor,
    *,
    max_len: int | None = None,
    min_len: int = 0,
    use_cache: bool = True,
    need_weights: bool = False,
) -> Generation:
    """Pick the most probable token at each step. src_ids (B, S) -> :class:`Generation`."""
    cfg = model.config
    steps = _steps(model, src_ids, max_len, min_len)
    encoded = model.encode(src_ids)
    b = src_ids.shape[0]
    tokens = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=src_ids.device)  # (B, 1)
    scores = torch.zeros(b, device=src_ids.device)
    done = torch.zeros(b, dtype=torch.bool, device=src_ids.device)
    cache: DecoderCache | None = None
    history: list[tuple[Tensor, ...]] = []
    for t in range(steps):
        out = _step(model, tokens, encoded, cache, use_cache, need_weights)
        cache = out.cache
        logp = _log_probs(model, out.logits[:, -1], t, min_len, last=t == steps - 1)  # (B, V)
        best, nxt = logp.max(dim=-1)  # (B,)
        nxt = nxt.masked_fill(done, cfg.pad_id)
        scores += best.masked_fill(done, 0.0)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)  # (B, t + 2)
        if out.cross_weights is not None:
            history.append(out.cross_weights)
        done |= nxt == cfg.eos_id
        if bool(done.all()):
            break
    weights = None
    if need_weights:
        # L x (B, H, T, S)
        weights = tuple(torch.cat(per_layer, dim=2) for per_layer in zip(*history, strict=True))
    return Generation(tokens[:, 1:], scores, weights)


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """((5 + length) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


class _Finished(NamedTuple):
    score: float
    tokens: Tensor  # (T,)
    weights: tuple[Tensor, ...] | None  # L x (H, T, S)


def _reorder(cache: DecoderCache, index: Tensor) -> DecoderCache:
    """Keep the self-attention caches of the surviving beams; cross-attention K/V are the
    same for every beam of a sentence and beams never leave their sentence."""
    return tuple(
        LayerCache(KVCache(c.self_attn.key[index], c.self_attn.value[index]), c.cross_attn)
        for c in cache
    )


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src_ids: Tensor,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len: int | None = None,
    min_len: int = 0,
    use_cache: bool = True,
    need_weights: bool = False,
) -> Generation:
    """Batched beam search (see the module docstring). src_ids (B, S) -> best hypothesis each."""
    cfg = model.config
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if beam_size > cfg.tgt_vocab_size - 3:
        raise ValueError(f"beam_size {beam_size} is larger than the usable vocabulary")
    steps = _steps(model, src_ids, max_len, min_len)
    b, k = src_ids.shape[0], beam_size
    device = src_ids.device
    enc = model.encode(src_ids)
    # every sentence's encoding repeated for its K beams: (BK, S, D), (BK, S)
    encoded = Encoded(enc.memory.repeat_interleave(k, dim=0), enc.src_keep.repeat_interleave(k, dim=0))
    tokens = torch.full((b * k, 1), cfg.bos_id, dtype=torch.long, device=device)  # (BK, 1)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # only the first beam is alive at the start
    base = (torch.arange(b, device=device) * k)[:, None]  # (B, 1)
    rank = torch.arange(2 * k, device=device)  # (2K,)
    finished: list[list[_Finished]] = [[] for _ in range(b)]
    done = [False] * b
    cache: DecoderCache | None = None
    history: tuple[Tensor, ...] | None = None  # L x (BK, H, t, S)
    for t in range(steps):
        out = _step(model, tokens, encoded, cache, use_cache, need_weights)
        logp = _log_probs(model, out.logits[:, -1], t, min_len, last=t == steps - 1)  # (BK, V)
        vocab = logp.shape[-1]
        cand = scores[:, :, None] + logp.view(b, k, vocab)  # (B, K, V)
        top_scores, top_idx = cand.view(b, k * vocab).topk(2 * k, dim=-1)  # (B, 2K)
        beam_idx, tok = top_idx // vocab, top_idx % vocab  # (B, 2K)
        step_weights = out.cross_weights
        if step_weights is not None:
            step_weights = tuple(
                torch.cat([h, w], dim=2) if h is not None else w
                for h, w in zip(history or (None,) * len(step_weights), step_weights, strict=True)
            )  # L x (BK, H, t + 1, S)
        is_eos = tok == cfg.eos_id
        final = is_eos & (rank < k) & torch.isfinite(top_scores)  # (B, 2K)
        for i, j in final.nonzero().tolist():
            if done[i]:
                continue
            row = int(base[i, 0] + beam_idx[i, j])
            hyp = torch.cat([tokens[row, 1:], tok[i, j : j + 1]])  # (t + 1,)
            w = None if step_weights is None else tuple(sw[row] for sw in step_weights)
            score = float(top_scores[i, j]) / gnmt_length_penalty(t + 1, length_penalty)
            _keep_best(finished[i], _Finished(score, hyp, w), k)
        # the K best continuations that do not end in EOS stay active (at most K end in EOS)
        order = (is_eos.long() * 2 * k + rank).topk(k, dim=-1, largest=False).indices  # (B, K)
        scores = top_scores.gather(1, order)
        rows = (base + beam_idx.gather(1, order)).view(-1)  # (BK,)
        tokens = torch.cat([tokens[rows], tok.gather(1, order).view(-1, 1)], dim=1)  # (BK, t + 2)
        if out.cache is not None:
            cache = _reorder(out.cache, rows)
        if step_weights is not None:
            history = tuple(sw[rows] for sw in step_weights)
        best_active = (scores.max(dim=1).values / gnmt_length_penalty(t + 1, length_penalty)).tolist()
        for i, f in enumerate(finished):
            done[i] = done[i] or (len(f) == k and best_active[i] <= min(h.score for h in f))
        if all(done):
            break
    return _collect(finished, cfg.pad_id, device)


def _keep_best(pool: list[_Finished], hyp: _Finished, k: int) -> None:
    """Add ``hyp`` to a sentence's finished hypotheses, keeping the K best."""
    if len(pool) < k:
        pool.append(hyp)
        return
    worst = min(range(k), key=lambda i: pool[i].score)
    if hyp.score > pool[worst].score:
        pool[worst] = hyp


def _collect(finished: list[list[_Finished]], pad_id: int, device: torch.device) -> Generation:
    best = [max(f, key=lambda h: h.score) for f in finished]
    length = max(h.tokens.shape[0] for h in best)
    tokens = torch.full((len(best), length), pad_id, dtype=torch.long, device=device)  # (B, T)
    for i, h in enumerate(best):
        tokens[i, : h.tokens.shape[0]] = h.tokens
    scores = torch.tensor([h.score for h in best], device=device)
    weights = None
    if best[0].weights is not None:
        weights = tuple(
            torch.stack([_pad_steps(h.weights[layer], length) for h in best])  # (B, H, T, S)
            for layer in range(len(best[0].weights))
        )
    return Generation(tokens, scores, weights)


def _pad_steps(w: Tensor, length: int) -> Tensor:
    """(H, t, S) -> (H, length, S), zero rows after the hypothesis ended."""
    return torch.nn.functional.pad(w, (0, 0, 0, length - w.shape[1]))
