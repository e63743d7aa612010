"""The onnxruntime back end of :class:`export.translator.Translator`: a folder written by
``vit-export`` for a translation checkpoint (:mod:`export.seq2seq_onnx` describes its
files), decoded with numpy and onnxruntime only -- no torch. Greedy decoding and beam
search are :mod:`vit.decoding`'s, on :class:`OnnxStepper`.

With I/O binding (the default) the K/V cache stays where onnxruntime wrote it: every decoder
call binds its inputs where they are and leaves its K/V outputs to onnxruntime, in the session's
own memory (its CPU arena, or GPU memory on a GPU provider), as ``OrtValue``s that the next
call binds as they are; only the logits (and the cross-attention weights when asked) come
back, as a numpy view of the host buffer onnxruntime wrote. Beam search's reorder gathers
the kept rows from a numpy view of the K/V into a new array (on a GPU through the host).
``io_binding=False`` is the plain ``session.run``: it returns every output as numpy, which
recent onnxruntime releases (1.32 measured) do without a copy on the CPU -- older ones copied
each output -- and which moves a GPU's K/V to the host and back at every step; on the CPU
the binding calls cost a little Python per step instead (``benchmarks/decode.py`` times both).

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
from .providers import GPU_PROVIDERS, Provider
from .translator import Translator


class OnnxState(NamedTuple):
    """The decoder's inputs besides the token: ``src_keep`` (N, S), ``cross_key_i`` /
    ``cross_value_i`` (N, H, S, Dh) and ``past_key_i`` / ``past_value_i`` (N, H, P, Dh),
    each a numpy array or (with I/O binding) an ``OrtValue``; ``rows`` (N,) the source
    sentence of each row."""

    feeds: dict[str, Any]
    rows: np.ndarray

    def array(self, name: str) -> np.ndarray:
        """The input ``name`` as numpy (a view of a CPU ``OrtValue``, a copy from a GPU)."""
        value = self.feeds[name]
        return value.numpy() if isinstance(value, ort.OrtValue) else value


class OnnxStepper:
    """:class:`vit.decoding.Stepper` over ``encoder.onnx`` and ``decoder.onnx``;
    ``io_binding`` keeps the K/V cache where onnxruntime wrote it (module docstring)."""

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession,
                 config: dict[str, Any], *, io_binding: bool = True) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.rules = DecodingRules.of(config)
        self.num_layers = config["dec_depth"]
        self.num_heads, self.head_dim = config["num_heads"], config["dim"] // config["num_heads"]
        self.io_binding = io_binding
        self.device, self.device_id = _device(decoder)
        self.cross_names = [o.name for o in encoder.get_outputs()]
        outputs = [o.name for o in decoder.get_outputs()]
        # the attention output only when asked for: onnxruntime runs just what the fetched outputs need
        self.fetch = {True: outputs, False: [name for name in outputs if name != "cross_weights"]}

    def start(self, src_ids: np.ndarray) -> OnnxState:
        src_ids = np.ascontiguousarray(src_ids, dtype=np.int64)
        b = src_ids.shape[0]
        keep = src_ids != self.rules.pad_id  # (B, S)
        empty = np.zeros((b, self.num_heads, 0, self.head_dim), dtype=np.float32)  # (B, H, 0, Dh)
        if self.io_binding:
            binding = self.encoder.io_binding()
            binding.bind_cpu_input("src_ids", src_ids)
            for name in self.cross_names:
                binding.bind_output(name, self.device, self.device_id)
            self.encoder.run_with_iobinding(binding)
            cross = binding.get_outputs()
            keep, empty = self._placed(keep), self._placed(empty)
        else:
            cross = self.encoder.run(None, {"src_ids": src_ids})
        feeds: dict[str, Any] = {"src_keep": keep}
        for i in range(self.num_layers):
            feeds[f"cross_key_{i}"], feeds[f"cross_value_{i}"] = cross[2 * i], cross[2 * i + 1]
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = empty, empty
        return OnnxState(feeds, np.arange(b))

    def step(self, tokens: np.ndarray, state: OnnxState, *, use_cache: bool = True,
             return_attention: bool = False) -> StepOutput:
        if not use_cache:
            raise ValueError("the ONNX decoder always decodes on its cache")
        feeds = dict(state.feeds)
        fetch = self.fetch[return_attention]
        run = self._run_bound if self.io_binding else self._run
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        for j in range(_shape(feeds["past_key_0"])[2], tokens.shape[1]):  # one position per decoder call
            logits, *rest = run(np.ascontiguousarray(tokens[:, j : j + 1]), feeds, fetch)
            # 2L x (N, H, P + 1, Dh), then (L, N, S) if fetched
            for i in range(self.num_layers):
                feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = rest[2 * i], rest[2 * i + 1]
        attention = rest[-1].transpose(1, 0, 2)[:, :, None] if return_attention else None  # (N, L, 1, S)
        return StepOutput(logits, OnnxState(feeds, state.rows), attention)

    def _run(self, tokens: np.ndarray, feeds: dict[str, Any], fetch: list[str]) -> list[Any]:
        return self.decoder.run(fetch, {"tokens": tokens, **feeds})

    def _run_bound(self, tokens: np.ndarray, feeds: dict[str, Any], fetch: list[str]) -> list[Any]:
        """One decoder call on bound buffers: the logits (and weights) as numpy views, the K/V
        as the ``OrtValue``s onnxruntime wrote."""
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("tokens", tokens)
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        for name in fetch:  # logits, 2L present K/V, cross_weights if fetched
            if name.startswith("present_"):
                binding.bind_output(name, self.device, self.device_id)
            else:
                binding.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(binding)
        logits, *rest = binding.get_outputs()
        weights = [rest.pop().numpy()] if len(rest) > 2 * self.num_layers else []  # (L, N, S)
        return [logits.numpy(), *rest, *weights]

    def reorder(self, state: OnnxState, index: np.ndarray) -> OnnxState:
        rows = state.rows[index]
        same_sources = rows.shape == state.rows.shape and bool((rows == state.rows).all())
        feeds = {name: value if same_sources and not name.startswith("past_") else self._take(value, index)
                 for name, value in state.feeds.items()}
        return OnnxState(feeds, rows)

    def _take(self, value: Any, index: np.ndarray) -> Any:
        """Rows ``index`` of an input, gathered into a new array (through the host on a GPU)."""
        if isinstance(value, ort.OrtValue):
            return self._placed(np.take(value.numpy(), index, axis=0))  # (N', ...)
        return value[index]

    def _placed(self, array: np.ndarray) -> Any:
        """A host array as an input where the cache lives: itself on the CPU, a copy on a GPU."""
        if self.device == "cpu":
            return array
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, self.device_id)


def _shape(value: Any) -> tuple[int, ...]:
    """The shape of a numpy array or an ``OrtValue``."""
    return tuple(value.shape()) if isinstance(value, ort.OrtValue) else value.shape


def _device(session: ort.InferenceSession) -> tuple[str, int]:
    """Where the session's K/V live: ``("cuda", id)`` on a GPU provider, else ``("cpu", 0)``."""
    first = session.get_providers()[0]
    if first not in GPU_PROVIDERS:
        return "cpu", 0
    return "cuda", int(session.get_provider_options().get(first, {}).get("device_id", 0))


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The translator's onnxruntime options: ``threads`` intra-op threads (default: onnxruntime's)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxTranslator(Translator):
    """An exported translation folder, served by onnxruntime; ``io_binding`` as in
    :class:`OnnxStepper`, ``intra_op_threads`` caps onnxruntime's threads."""

    def __init__(self, directory: str | Path, *, providers: Sequence[Provider] | None = None,
                 intra_op_threads: int | None = None, io_binding: bool = True) -> None:
        directory = Path(directory)
        encoder, decoder, config = (directory / name for name in SEQ2SEQ_FILES)
        if not config.is_file():
            raise FileNotFoundError(f"{directory}: no {config.name}; not an exported translation model")
        self.meta = json.loads(config.read_text(encoding="utf-8"))
        self.config = cfg = self.meta["config"]
        prov = list(providers) if providers else ["CPUExecutionProvider"]
        options = session_options(intra_op_threads)
        stepper = OnnxStepper(ort.InferenceSession(str(encoder), options, providers=prov),
                              ort.InferenceSession(str(decoder), options, providers=prov), cfg,
                              io_binding=io_binding)
        super().__init__(TextCodec.load(directory, max_len=cfg["max_len"]), stepper, cfg["dec_depth"],
                         decoding=self.meta.get("decoding"))
