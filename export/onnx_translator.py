"""The onnxruntime back end of :class:`export.translator.Translator`: a folder written by
``vit-export`` for a translation checkpoint (:mod:`export.seq2seq_onnx` describes its
files), decoded with numpy and onnxruntime only -- no torch. Greedy decoding and beam
search are :mod:`vit.decoding`'s, on :class:`OnnxStepper`.

Shape letters: B batch (N rows while decoding), S source length, P decoded length,
H heads, Dh head width, L decoder layers, V vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from vit.decoding import StepOutput
from vit.text_codec import DecodingRules, TextCodec

from .metadata import SEQ2SEQ_FILES
from .translator import Translator


class OnnxState(NamedTuple):
    """The decoder's inputs besides the token: ``src_keep`` (N, S), ``cross_key_i`` /
    ``cross_value_i`` (N, H, S, Dh) and ``past_key_i`` / ``past_value_i`` (N, H, P, Dh);
    ``rows`` (N,) the source sentence of each row."""

    feeds: dict[str, np.ndarray]
    rows: np.ndarray


class OnnxStepper:
    """:class:`vit.decoding.Stepper` over ``encoder.onnx`` and ``decoder.onnx``."""

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession,
                 config: dict[str, Any]) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.rules = DecodingRules.of(config)
        self.num_layers = config["dec_depth"]
        self.num_heads, self.head_dim = config["num_heads"], config["dim"] // config["num_heads"]
        outputs = [o.name for o in decoder.get_outputs()]
        # the attention output only when asked for: onnxruntime runs just what the fetched outputs need
        self.fetch = {True: outputs, False: [name for name in outputs if name != "cross_weights"]}

    def start(self, src_ids: np.ndarray) -> OnnxState:
        cross = self.encoder.run(None, {"src_ids": src_ids})
        b = src_ids.shape[0]
        feeds: dict[str, np.ndarray] = {"src_keep": src_ids != self.rules.pad_id}
        empty = np.zeros((b, self.num_heads, 0, self.head_dim), dtype=np.float32)  # (B, H, 0, Dh)
        for i in range(self.num_layers):
            feeds[f"cross_key_{i}"], feeds[f"cross_value_{i}"] = cross[2 * i], cross[2 * i + 1]
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = empty, empty
        return OnnxState(feeds, np.arange(b))

    def step(self, tokens: np.ndarray, state: OnnxState, *, use_cache: bool = True,
             return_attention: bool = False) -> StepOutput:
        if not use_cache:
            raise ValueError("the ONNX decoder always decodes on its cache")
        feeds = dict(state.feeds)
        past = feeds["past_key_0"].shape[2]
        for j in range(past, tokens.shape[1]):  # one position per decoder call
            logits, *rest = self.decoder.run(self.fetch[return_attention],
                                             {"tokens": tokens[:, j : j + 1], **feeds})
            presents = rest[: 2 * self.num_layers]  # 2L x (N, H, P + 1, Dh), then (L, N, S) if fetched
            for i in range(self.num_layers):
                feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = presents[2 * i], presents[2 * i + 1]
        attention = rest[-1].transpose(1, 0, 2)[:, :, None] if return_attention else None  # (N, L, 1, S)
        return StepOutput(logits, OnnxState(feeds, state.rows), attention)

    def reorder(self, state: OnnxState, index: np.ndarray) -> OnnxState:
        rows = state.rows[index]
        same_sources = rows.shape == state.rows.shape and bool((rows == state.rows).all())
        feeds = {name: value if same_sources and not name.startswith("past_") else value[index]
                 for name, value in state.feeds.items()}
        return OnnxState(feeds, rows)


class OnnxTranslator(Translator):
    """An exported translation folder, served by onnxruntime."""

    def __init__(self, directory: str | Path, *, providers: Sequence[str] | None = None) -> None:
        directory = Path(directory)
        encoder, decoder, config = (directory / name for name in SEQ2SEQ_FILES)
        if not config.is_file():
            raise FileNotFoundError(f"{directory}: no {config.name}; not an exported translation model")
        self.meta = json.loads(config.read_text(encoding="utf-8"))
        self.config = cfg = self.meta["config"]
        prov = list(providers) if providers else ["CPUExecutionProvider"]
        stepper = OnnxStepper(ort.InferenceSession(str(encoder), providers=prov),
                              ort.InferenceSession(str(decoder), providers=prov), cfg)
        super().__init__(TextCodec.load(directory, max_len=cfg["max_len"]), stepper, cfg["dec_depth"],
                         decoding=self.meta.get("decoding"))
