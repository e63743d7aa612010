"""Translation for people: text in, text out, over any back end that decodes.

:class:`Translator` turns sentences into token ids (:class:`vit.text_codec.TextCodec`),
decodes them with the searches of :mod:`vit.decoding` on its back end's
:class:`~vit.decoding.Stepper`, and turns the ids back into text. Back ends:
:class:`export.onnx_translator.OnnxTranslator` (an exported folder, onnxruntime, no
torch) and :class:`export.torch_translator.TorchTranslator` (a checkpoint, PyTorch);
:func:`export.translate.load_translator` picks one from a path. This module imports no
torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vit.decoding import Stepper, beam_search, greedy_decode
from vit.text_codec import TextCodec


@dataclass
class Translation:
    """One translated sentence.

    ``attention`` (when asked for): cross-attention (L, T, S) averaged over heads, one
    (generated tokens x source tokens) matrix per decoder layer, rows summing to 1;
    ``src_tokens`` (S, ending in ``<eos>``) and ``out_tokens`` (T, ending in ``<eos>``
    unless cut at the length limit) label its axes.
    """

    source: str
    text: str
    src_tokens: list[str]
    out_tokens: list[str]
    attention: np.ndarray | None = None
    truncated: bool = False


class Translator:
    """Sentences -> :class:`Translation` with a codec and a back end's stepper; ``num_layers``
    is the number of decoder layers (of the attention). ``decoding``: the default beam width
    and length penalty (an exported model carries the ones chosen on its validation set)."""

    def __init__(self, codec: TextCodec, stepper: Stepper, num_layers: int,
                 decoding: dict[str, float] | None = None) -> None:
        self.codec, self.stepper, self.num_layers = codec, stepper, num_layers
        self.decoding = {"beam": 1, "length_penalty": 0.6, **(decoding or {})}

    def translate(self, texts: Sequence[str], *, beam: int | None = None,
                  length_penalty: float | None = None, max_len: int | None = None, batch_size: int = 32,
                  return_attention: bool = False) -> list[Translation]:
        """Greedy decoding (``beam=1``) or beam search, longest sentences batched first;
        ``None`` takes the model's default (:attr:`decoding`)."""
        beam = int(self.decoding["beam"]) if beam is None else beam
        if length_penalty is None:
            length_penalty = float(self.decoding["length_penalty"])
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        encoded = self.codec.encode(texts)
        results: list[Translation | None] = [None] * len(texts)
        for chunk in self.codec.batches(encoded, batch_size):
            src = self.codec.pad([encoded[i][0] for i in chunk])  # (B, S)
            if beam == 1:
                gen = greedy_decode(self.stepper, src, max_len=max_len, return_attention=return_attention)
            else:
                gen = beam_search(self.stepper, src, beam_size=beam, length_penalty=length_penalty,
                                  max_len=max_len, return_attention=return_attention)
            attention = None if gen.attention is None else gen.attention.mean(axis=2)  # (B, L, T, S)
            for row, i in enumerate(chunk):
                ids, cut = encoded[i]
                results[i] = self._finish(texts[i], ids, gen.tokens[row], cut,
                                          None if attention is None else attention[row])
        return [r if r is not None else self._empty(texts[i], return_attention)
                for i, r in enumerate(results)]

    def _finish(self, source: str, src_ids: list[int], out_ids: Sequence[int], truncated: bool,
                attention: np.ndarray | None) -> Translation:
        """A :class:`Translation` from generated ids and, when given, head-averaged
        cross-attention (L, T', S') trimmed to the real tokens."""
        out = self.codec.cut(out_ids)
        if attention is not None:
            attention = np.ascontiguousarray(attention[:, : len(out), : len(src_ids)], dtype=np.float32)
        return Translation(source=source, text=self.codec.decode(out),
                           src_tokens=self.codec.tokens(src_ids, "src"), out_tokens=self.codec.tokens(out),
                           attention=attention, truncated=truncated)

    def _empty(self, source: str, return_attention: bool) -> Translation:
        attention = np.zeros((self.num_layers, 0, 0), dtype=np.float32) if return_attention else None
        return Translation(source, "", [], [], attention, False)
