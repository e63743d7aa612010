"""Text Transformer encoder-decoder (Vaswani et al. 2017) on the project's attention core.

Encoder: token embedding * sqrt(D) + sinusoidal positions -> L_enc blocks of
self-attention and MLP. Decoder: the same embedding/positions -> L_dec blocks of causal
self-attention, cross-attention to the encoder output, and MLP -> logits over the target
vocabulary. Pre-norm (``norm_first=True``, with a final norm after each stack) or the
paper's post-norm.

Shape letters: B batch, S source length, T target length of this call, P cached (past)
target length, D width, H heads, Dh head width, V vocabulary size, L decoder layers.

Padding is masked everywhere with :func:`vit.attention.padding_mask`; token ids of
``pad``/``bos``/``eos`` come from the tokenizer through :class:`Seq2SeqConfig`.

Incremental decoding: :meth:`Seq2Seq.decode` takes and returns a :data:`DecoderCache`,
one :class:`LayerCache` per decoder layer: the self-attention ``KVCache`` grows by T per
call; the cross-attention ``KVCache`` is the projected encoder output, computed on the
first call and reused after. :meth:`Seq2Seq.start`, :meth:`Seq2Seq.step` and
:meth:`Seq2Seq.reorder` are the step interface the searches of :mod:`vit.decoding` use
(tokens and state in, logits and state out); a decoder-only model offers the same three.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .attention import KVCache, MultiHeadAttention, padding_mask
from .errors import ConfigError
from .layers import Block, Mlp

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class Seq2SeqConfig:
    """Everything that defines the encoder-decoder. Plain values only (YAML/JSON safe)."""

    src_vocab_size: int
    tgt_vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    dim: int = 256
    num_heads: int = 4
    enc_depth: int = 3
    dec_depth: int = 3
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # MLP width; overrides mlp_ratio when set
    activation: str = "relu"  # "relu" (the paper) or "gelu"
    dropout: float = 0.1  # on embeddings and on every residual branch's output (the paper's)
    attn_dropout: float = 0.0  # on attention weights
    max_len: int = 256  # longest source and longest decoder input (positions table size)
    share_embeddings: bool = False  # one embedding for source and target (joint vocabulary)
    tie_output: bool = True  # output projection shares the target embedding matrix
    norm_first: bool = True  # pre-norm; False is the paper's post-norm
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "dim", "num_heads", "enc_depth",
                     "dec_depth", "max_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Seq2SeqConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads != 0:
            raise ConfigError(
                f"Seq2SeqConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < self.tgt_vocab_size:
                raise ConfigError(
                    f"Seq2SeqConfig.{name}={value} is outside the target vocabulary "
                    f"[0, {self.tgt_vocab_size})"
                )
        if not 0 <= self.pad_id < self.src_vocab_size:
            raise ConfigError(
                f"Seq2SeqConfig.pad_id={self.pad_id} is outside the source vocabulary "
                f"[0, {self.src_vocab_size})"
            )
        if len({self.pad_id, self.bos_id, self.eos_id}) != 3:
            raise ConfigError(
                f"Seq2SeqConfig pad_id, bos_id and eos_id must differ, got "
                f"{self.pad_id}, {self.bos_id}, {self.eos_id}"
            )
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(
                "Seq2SeqConfig.share_embeddings needs one joint vocabulary, got src_vocab_size="
                f"{self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}"
            )
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(f"Seq2SeqConfig.activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.mlp_hidden is not None and self.mlp_hidden <= 0:
            raise ConfigError(f"Seq2SeqConfig.mlp_hidden must be positive, got {self.mlp_hidden}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"Seq2SeqConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def hidden_dim(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerCache(NamedTuple):
    """One decoder layer's cache: self-attention K/V (B, H, P, Dh) and cross-attention K/V
    of the projected encoder output (B, H, S, Dh)."""

    self_attn: KVCache | None
    cross_attn: KVCache | None


DecoderCache = tuple[LayerCache, ...]


class Encoded(NamedTuple):
    """Encoder output (B, S, D) and the source keep-mask (B, S), ``True`` for real tokens."""

    memory: Tensor
    src_keep: Tensor


class Decoded(NamedTuple):
    """``logits`` (B, T, V); ``cache`` when asked for; ``cross_attention``: one (B, H, T, S)
    tensor per decoder layer when asked for."""

    logits: Tensor
    cache: DecoderCache | None
    cross_attention: tuple[Tensor, ...] | None


class DecoderState(NamedTuple):
    """What :meth:`Seq2Seq.step` carries between steps: the encoder output (its ``memory``
    is read on the first cached step only), the decoder cache (``None`` before the first
    step) and ``rows`` (N,), the source sentence each row decodes."""

    encoded: Encoded
    cache: DecoderCache | None
    rows: Tensor


class Step(NamedTuple):
    """One step's ``logits`` (N, V) for the newest position, the new ``state`` and, when
    asked for, that position's cross-attention ``attention`` (N, L, H, S)."""

    logits: Tensor
    state: DecoderState
    attention: Tensor | None


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """The paper's fixed position encodings (length, D): sin on even, cos on odd channels."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]  # (N, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (D/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table  # (N, D)


def _attention(cfg: Seq2SeqConfig, cross: bool = False) -> MultiHeadAttention:
    return MultiHeadAttention(cfg.dim, cfg.num_heads, cross=cross, attn_drop=cfg.attn_dropout,
                              proj_drop=cfg.dropout)


def _norm(cfg: Seq2SeqConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)


def _mlp(cfg: Seq2SeqConfig) -> Mlp:
    return Mlp(cfg.dim, cfg.hidden_dim, activation=_ACTIVATIONS[cfg.activation])


def _encoder_block(cfg: Seq2SeqConfig) -> Block:
    """Self-attention and MLP with the paper's residual dropout (none inside the MLP)."""
    return Block(cfg.dim, cfg.num_heads, mlp_hidden=cfg.hidden_dim, activation=_ACTIVATIONS[cfg.activation],
                 attn_drop=cfg.attn_dropout, proj_drop=cfg.dropout, mlp_drop=0.0, norm_eps=cfg.norm_eps,
                 norm_first=cfg.norm_first)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, MLP."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn, self.norm1 = _attention(cfg), _norm(cfg)
        self.cross_attn, self.norm2 = _attention(cfg, cross=True), _norm(cfg)
        self.mlp = _mlp(cfg)
        self.mlp_drop = nn.Dropout(cfg.dropout)
        self.norm3 = _norm(cfg)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        *,
        self_mask: Tensor | None,
        cross_mask: Tensor,
        cache: LayerCache | None,
        use_cache: bool,
        return_attention: bool,
    ) -> tuple[Tensor, LayerCache | None, Tensor | None]:
        """x (B, T, D), memory (B, S, D) (may be ``None`` when the cache holds its K/V)."""
        past = cache if cache is not None else LayerCache(None, None)
        h = self.norm1(x) if self.norm_first else x
        sa = self.self_attn(h, mask=self_mask, causal=True, cache=past.self_attn, use_cache=use_cache)
        x = x + sa.x if self.norm_first else self.norm1(x + sa.x)
        h = self.norm2(x) if self.norm_first else x
        ca = self.cross_attn(h, memory, mask=cross_mask, cache=past.cross_attn, use_cache=use_cache,
                             return_attention=return_attention)
        x = x + ca.x if self.norm_first else self.norm2(x + ca.x)
        if self.norm_first:
            x = x + self.mlp_drop(self.mlp(self.norm3(x)))
        else:
            x = self.norm3(x + self.mlp_drop(self.mlp(x)))
        new_cache = LayerCache(sa.cache, ca.cache) if use_cache else None
        return x, new_cache, ca.weights


class TokenEmbedding(nn.Module):
    """Token ids (B, N) -> embeddings (B, N, D) scaled by sqrt(D) (paper, section 3.4)."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))
        self.scale = math.sqrt(dim)
        nn.init.normal_(self.weight, std=dim**-0.5)

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, self.weight) * self.scale


class Seq2Seq(nn.Module):
    """Encoder-decoder Transformer.

    ``model(src_ids, tgt_ids)`` -> logits (B, T, V) with teacher forcing, where ``tgt_ids``
    is the decoder input (BOS followed by the target, right-padded with ``pad_id``).
    For generation use :meth:`start` once and :meth:`step` with the cache (see
    :mod:`vit.decoding`).
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.src_embed = TokenEmbedding(cfg.src_vocab_size, cfg.dim)
        shared = cfg.share_embeddings
        self.tgt_embed = self.src_embed if shared else TokenEmbedding(cfg.tgt_vocab_size, cfg.dim)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.dim), persistent=False)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(_encoder_block(cfg) for _ in range(cfg.enc_depth))
        self.encoder_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_depth))
        self.decoder_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()
        self.head = nn.Linear(cfg.dim, cfg.tgt_vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_output:
            self.head.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        """Xavier-uniform linear layers with zero biases (as fairseq and ``nn.Transformer``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- input checks ------------------------------------------------------------------
    def _check_ids(self, ids: Tensor, vocab_size: int, what: str, offset: int = 0) -> None:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"{what} ids must be an integer (B, N) tensor, got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise ValueError(f"{what} token id {bad} is out of range [0, {vocab_size})")
        if offset + ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"{what} length {offset + ids.shape[1]} exceeds the model's max_len {self.config.max_len}"
            )

    # -- encoder -----------------------------------------------------------------------
    def encode(self, src_ids: Tensor) -> Encoded:
        """src_ids (B, S), right- or left-padded with ``pad_id`` -> :class:`Encoded`."""
        self._check_ids(src_ids, self.config.src_vocab_size, "source")
        return self._encode(src_ids)

    def _encode(self, src_ids: Tensor) -> Encoded:
        src_keep = src_ids != self.config.pad_id  # (B, S)
        mask = padding_mask(src_keep)  # (B, 1, 1, S)
        x = self.src_embed(src_ids) + self.positions[: src_ids.shape[1]]  # (B, S, D)
        x = self.embed_drop(x)
        for block in self.encoder:
            x = block(x, mask=mask).x
        return Encoded(self.encoder_norm(x), src_keep)

    # -- decoder -----------------------------------------------------------------------
    def decode(
        self,
        tgt_ids: Tensor,
        encoded: Encoded,
        *,
        cache: DecoderCache | None = None,
        use_cache: bool = False,
        return_attention: bool = False,
        tgt_keep: Tensor | None = None,
    ) -> Decoded:
        """Decoder logits for ``tgt_ids`` (B, T), which follow the P cached positions.

        cache: from the previous call (``None`` on the first); its cross-attention K/V
            replace ``encoded.memory``, which is then not read.
        tgt_keep: optional boolean (B, P + T) keep-mask of target padding. Right padding
            needs none: the causal mask already hides later positions.
        return_attention: also return the cross-attention weights, one (B, H, T, S) per layer.
        """
        past = 0 if cache is None or cache[0].self_attn is None else cache[0].self_attn.key.shape[2]
        self._check_ids(tgt_ids, self.config.tgt_vocab_size, "target", offset=past)
        if cache is not None and len(cache) != len(self.decoder):
            raise ValueError(f"decoder cache has {len(cache)} layers, the model {len(self.decoder)}")
        return self._decode(tgt_ids, encoded, cache, past, use_cache, return_attention, tgt_keep)

    def _decode(
        self,
        tgt_ids: Tensor,
        encoded: Encoded,
        cache: DecoderCache | None,
        past: int,
        use_cache: bool,
        return_attention: bool,
        tgt_keep: Tensor | None,
    ) -> Decoded:
        t_len = tgt_ids.shape[1]
        x = self.tgt_embed(tgt_ids) + self.positions[past : past + t_len]  # (B, T, D)
        x = self.embed_drop(x)
        self_mask = padding_mask(tgt_keep) if tgt_keep is not None else None  # (B, 1, 1, P + T)
        cross_mask = padding_mask(encoded.src_keep)  # (B, 1, 1, S)
        new_cache, weights = [], []
        for i, layer in enumerate(self.decoder):
            x, layer_cache, w = layer(
                x, encoded.memory, self_mask=self_mask, cross_mask=cross_mask,
                cache=None if cache is None else cache[i], use_cache=use_cache,
                return_attention=return_attention,
            )
            new_cache.append(layer_cache)
            weights.append(w)
        logits = self.head(self.decoder_norm(x))  # (B, T, V)
        return Decoded(logits, tuple(new_cache) if use_cache else None,
                       tuple(weights) if return_attention else None)

    def forward(self, src_ids: Tensor, tgt_ids: Tensor) -> Tensor:
        """Teacher forcing: src_ids (B, S), decoder input tgt_ids (B, T) -> logits (B, T, V)."""
        return self.decode(tgt_ids, self.encode(src_ids)).logits

    # -- the step interface of vit.decoding ---------------------------------------------
    def start(self, src_ids: Tensor) -> DecoderState:
        """Encode the sources (B, S): the state before the first step."""
        rows = torch.arange(src_ids.shape[0], device=src_ids.device)
        return DecoderState(self.encode(src_ids), None, rows)

    def step(self, tokens: Tensor, state: DecoderState, *, use_cache: bool = True,
             return_attention: bool = False) -> Step:
        """The next-token logits after the prefixes ``tokens`` (N, t) (BOS first). With
        ``use_cache`` only the positions the cache lacks are run; without it the whole prefix
        is run again (to measure what the cache saves)."""
        if use_cache:
            past = 0 if state.cache is None else state.cache[0].self_attn.key.shape[2]
            out = self.decode(tokens[:, past:], state.encoded, cache=state.cache, use_cache=True,
                              return_attention=return_attention)
            state = state._replace(cache=out.cache)
        else:
            out = self.decode(tokens, state.encoded, return_attention=return_attention)
        attention = None
        if out.cross_attention is not None:
            attention = torch.stack([w[:, :, -1] for w in out.cross_attention], dim=1)  # (N, L, H, S)
        return Step(out.logits[:, -1], state, attention)

    def reorder(self, state: DecoderState, index: Tensor) -> DecoderState:
        """The state of rows ``index`` (N',): beam search keeps, repeats and drops rows. The
        encoder output and the cross-attention K/V are copied only when a row changes its
        source sentence."""
        rows = state.rows[index]
        same_sources = rows.shape == state.rows.shape and bool(torch.equal(rows, state.rows))
        memory = state.encoded.memory
        encoded = state.encoded if same_sources else Encoded(
            None if memory is None else memory[index], state.encoded.src_keep[index])
        cache = None
        if state.cache is not None:
            cache = tuple(
                LayerCache(KVCache(c.self_attn.key[index], c.self_attn.value[index]),
                           c.cross_attn if same_sources else KVCache(c.cross_attn.key[index],
                                                                      c.cross_attn.value[index]))
                for c in state.cache
            )
        return DecoderState(encoded, cache, rows)

    def project_memory(self, encoded: Encoded) -> tuple[KVCache, ...]:
        """The cross-attention K/V (B, H, S, Dh) of every decoder layer, for exporters that
        compute them once next to the encoder."""
        return tuple(layer.cross_attn.project_context(encoded.memory) for layer in self.decoder)
