"""Serving backends for one exported ``.onnx`` file: onnxruntime, or OpenVINO's own runtime
reading the same file; the precisions each runs on this machine; and the ``auto`` choice.

    runner = open_backend("model.onnx", backend="auto", precision="auto", gate=meta.gate)
    runner.backend, runner.precision          # "openvino", "bf16": what actually runs
    runner.run(x, ["logits"])                 # {"logits": (B, K) float32}; only what is asked

``auto`` takes the first entry of :data:`RANKING` (fastest first, measured by
``benchmarks/inference.py``) that this machine runs and that the file's parity gate
(:mod:`export.gate`) allows: a reduced precision only where the gate record says it passed,
fp32 unless the record says it failed. A file without a record gets fp32 on the fastest
fp32 backend. A backend asked for by name that is missing (openvino not installed, a
GPU provider onnxruntime lacks) gets one logged line naming the fallback.

Only the outputs asked for are computed and copied: OpenVINO compiles one model per set of
outputs (the logits-only one at load, the one with ``attention`` when first asked for);
onnxruntime is asked for the named outputs only. Shape letters: B batch, K classes.
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from .providers import GPU_PROVIDERS, Provider, import_onnxruntime, provider_name, resolve_providers

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")
REDUCED = ("bf16", "fp16")
# fastest first on a CPU (benchmarks/inference.py, 2-core AMD EPYC with AVX512-BF16): OpenVINO
# bf16 ~2x either fp32 backend; OpenVINO fp32 with only the logits compiled ~10% ahead of
# onnxruntime fp32 at batch 64 and even at batch 1
RANKING = (("openvino", "bf16"), ("openvino", "fp16"), ("openvino", "fp32"), ("onnxruntime", "fp32"))
# with a CUDA or TensorRT provider only onnxruntime drives the GPU (OpenVINO's GPU is Intel's)
GPU_RANKING = (("onnxruntime", "fp16"), ("onnxruntime", "fp32"))
OPENVINO_MISSING = 'openvino is not installed (pip install "vit-service[cpu]" or pip install openvino)'
ORT_MISSING = 'onnxruntime is not installed (pip install "vit-service[cpu]" or "vit-service[gpu]")'
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class Runner(Protocol):
    """What :class:`~export.onnx_classifier.OnnxClassifier` needs from a backend."""

    backend: str
    precision: str
    input_name: str
    output_names: list[str]
    output_shapes: dict[str, list[int | None]]  # None: a dynamic dimension

    @property
    def providers(self) -> list[str]: ...

    @property
    def description(self) -> str: ...

    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]: ...


class Choice(NamedTuple):
    backend: str
    precision: str


# --------------------------------------------------------------------------- what runs here
def _core() -> Any:
    """One ``openvino.Core`` per process (raises ImportError without openvino)."""
    import openvino  # noqa: F401  (a fresh import each time, so tests can hide the module)

    return _cached_core()


@lru_cache(maxsize=1)
def _cached_core() -> Any:
    import openvino

    return openvino.Core()


@lru_cache(maxsize=4)
def openvino_capabilities(device: str = "CPU") -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of ``device`` (``BF16`` where the CPU has
    AVX512-BF16 or AMX, ``FP16`` where it computes in float16)."""
    return tuple(_core().get_property(device, "OPTIMIZATION_CAPABILITIES"))


def openvino_device_name(device: str = "CPU") -> str:
    """The device as OpenVINO names it (``FULL_DEVICE_NAME``), e.g. ``AMD EPYC``."""
    return str(_core().get_property(device, "FULL_DEVICE_NAME"))


def availability(*, variant: str = "fp32",
                 tensorrt: bool = False) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(backend -> precisions it runs here, backend -> why it is unavailable).

    A reduced-precision file (``variant`` int8 or fp16) runs as it is, on onnxruntime, which
    verified it at export. ``tensorrt``: onnxruntime's TensorRT provider is active (fp16)."""
    available: dict[str, tuple[str, ...]] = {}
    missing: dict[str, str] = {}
    try:
        import_onnxruntime()
        available["onnxruntime"] = ("fp32", "fp16") if tensorrt else ("fp32",)
    except ImportError:
        missing["onnxruntime"] = ORT_MISSING
    if not variant.startswith("fp32"):
        if "onnxruntime" in available:
            available["onnxruntime"] = (variant,)
        missing["openvino"] = f"the {variant} file is served by onnxruntime, which verified it"
        return available, missing
    try:
        caps = openvino_capabilities()
    except ImportError:
        missing["openvino"] = OPENVINO_MISSING
    else:
        available["openvino"] = ("fp32", *(p for p in REDUCED if p.upper() in caps))
    return available, missing


def verdicts(record: dict[str, Any] | None) -> dict[tuple[str, str], bool]:
    """``{(backend, precision): passed}`` of a file's ``vit.gate`` record (:mod:`export.gate`);
    empty without one."""
    if not isinstance(record, dict):
        return {}
    found = {}
    for result in record.get("results", []):
        try:
            found[(str(result["backend"]), str(result["precision"]))] = bool(result["passed"])
        except (KeyError, TypeError):
            logger.warning("ignoring a malformed vit.gate entry: %r", result)
    return found


def _describe(available: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{b} {', '.join(p)}" for b, p in available.items()) or "nothing"


def choose(backend: str, precision: str, *, available: dict[str, tuple[str, ...]],
           missing: dict[str, str] | None = None, passed: dict[tuple[str, str], bool] | None = None,
           gpu: bool = False, where: str = "model") -> Choice:
    """The backend and precision to serve with (see the module docstring for the rule).

    ``passed``: the file's gate verdicts by (backend, precision); ``missing``: why a backend is
    not in ``available``. Raises ValueError for a precision that nothing here runs."""
    missing, passed = missing or {}, passed or {}
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be auto, {', '.join(BACKENDS)}; got {backend!r}")
    if not available:
        raise RuntimeError(f"{where}: no backend to serve with: {'; '.join(missing.values())}")
    fell_back = backend != "auto" and backend not in available
    wanted = "auto" if fell_back else backend
    ranking = [c for c in (GPU_RANKING if gpu else RANKING) if c[0] in available and c[1] in available[c[0]]]
    ranking += [(b, p) for b, ps in available.items() for p in ps if (b, p) not in ranking
                and not (gpu and wanted == "auto" and b == "openvino")]
    pool = [c for c in ranking if wanted in ("auto", c[0])]
    note = ""
    if precision != "auto":
        matches = [c for c in pool if c[1] == precision]
        if not matches and fell_back:
            note = f" ({precision} is not available without it)"
            matches = [c for c in pool if c[1] == "fp32"] or pool
        if not matches:
            on = "" if wanted == "auto" else f" on {wanted}"
            raise ValueError(f"{where}: precision {precision} is not available{on} on this machine "
                             f"(available: {_describe(available)})")
        chosen = matches[0]
        if chosen[1] in REDUCED and passed.get(chosen) is not True:
            verdict = "failed" if chosen in passed else "has no record of"
            logger.warning("%s: %s %s %s the parity gate; running it as asked", where, *chosen, verdict)
    else:
        usable = [c for c in pool
                  if passed.get(c) is True or (c[1] not in REDUCED and passed.get(c) is not False)]
        chosen = (usable or pool)[0]
    if fell_back:
        logger.warning("%s: backend %s is not available (%s); falling back to %s %s%s", where, backend,
                       missing.get(backend, "not installed"), *chosen, note)
    return Choice(*chosen)


# --------------------------------------------------------------------------- onnxruntime
class OrtRunner:
    """onnxruntime on one file. ``io_binding`` (default: with a GPU provider) binds the input
    from host memory and writes each output straight into a preallocated numpy array, so no
    output is copied twice (device -> onnxruntime's buffer -> numpy)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[Provider], *, precision: str = "fp32",
                 threads: int | None = None, io_binding: bool | None = None) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own classes for bad protobufs and graphs
            raise ValueError(f"{path}: not a loadable ONNX model ({_first_line(exc)})") from exc
        active = self.session.get_providers()
        for wanted in map(provider_name, providers[:-1]):
            if wanted not in active:
                logger.warning("%s could not start %s (no device?); running on %s", path, wanted,
                               ", ".join(active))
        self.precision = precision
        self.version = ort.__version__
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        outputs = self.session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.output_shapes = {o.name: [d if isinstance(d, int) else None for d in o.shape] for o in outputs}
        self._float_outputs = {o.name for o in outputs if o.type == "tensor(float)"}
        self.io_binding = active[0] in GPU_PROVIDERS if io_binding is None else io_binding

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def description(self) -> str:
        return f"onnxruntime {self.version} ({self.providers[0]}, {self.precision})"

    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if self.io_binding:
            return self._run_bound(x, outputs)
        values = self.session.run(list(outputs), {self.input_name: x})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)}

    def _run_bound(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        results: dict[str, np.ndarray | None] = {}
        for name in outputs:
            shape = [len(x) if d is None and i == 0 else d for i, d in enumerate(self.output_shapes[name])]
            if name in self._float_outputs and None not in shape:
                out = np.empty(shape, np.float32)  # onnxruntime writes (or copies from the GPU) here
                binding.bind_output(name, "cpu", 0, np.float32, out.shape, out.ctypes.data)
                results[name] = out
            else:
                binding.bind_output(name, "cpu")
                results[name] = None
        self.session.run_with_iobinding(binding)
        if any(v is None for v in results.values()):
            for name, value in zip(outputs, binding.copy_outputs_to_cpu(), strict=True):
                if results[name] is None:
                    results[name] = np.asarray(value, dtype=np.float32)
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- OpenVINO
class OpenVinoRunner:
    """OpenVINO's runtime on the same ``.onnx`` file, at ``precision`` (its
    ``INFERENCE_PRECISION_HINT``: OpenVINO computes in bf16 by default on CPUs that can, so
    fp32 is set explicitly).

    One compiled model per set of outputs, with a dynamic batch; batches of the sizes in
    ``static_batches`` get a model of their own with that batch fixed (compiled on first use,
    ~0.25 s for the CIFAR ViT), which OpenVINO runs ~10% faster at batch 1 and ~5% at 64.
    Thread-safe: each call takes an idle infer request of its model from a pool."""

    backend = "openvino"
    STATIC_BATCHES = (1, 32, 64)  # the demo's, vit-predict's and OnnxClassifier.predict's batches

    def __init__(self, path: str | Path, *, precision: str = "fp32", threads: int | None = None,
                 device: str = "CPU", static_batches: Sequence[int] = STATIC_BATCHES) -> None:
        import openvino

        self._ov = openvino
        self._core = _core()
        self.version = openvino.get_version().split("-")[0]
        self.path, self.precision, self.device = Path(path), precision, device
        self.static_batches = tuple(static_batches)
        try:
            self._model = self._core.read_model(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a loadable ONNX model ({_first_line(exc, last=True)})") from exc
        model_input = self._model.inputs[0]
        self.input_name = model_input.get_any_name()
        half = model_input.get_element_type().get_type_name() == "f16"
        self.input_dtype = np.float16 if half else np.float32
        self._input_dims = [d.get_length() if d.is_static else None for d in model_input.get_partial_shape()]
        self.output_names = [o.get_any_name() for o in self._model.outputs]
        self.output_shapes = {
            o.get_any_name(): [d.get_length() if d.is_static else None for d in o.get_partial_shape()]
            for o in self._model.outputs
        }
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
                                        "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        # (outputs, fixed batch or None) -> (compiled model, output index by name, idle requests)
        self._compiled: dict[tuple[tuple[str, ...], int | None], tuple[Any, dict[str, int], Any]] = {}
        self._lock = threading.Lock()
        labels = ("logits",) if "logits" in self.output_names else tuple(self.output_names)
        self._compiled_for(labels, None)

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO {self.device}"]

    @property
    def description(self) -> str:
        return f"OpenVINO {self.version} ({self.device}, {self.precision})"

    @property
    def compiled_outputs(self) -> list[tuple[str, ...]]:
        """The output sets compiled so far (each a model of its own), in order."""
        return list(dict.fromkeys(outputs for outputs, _ in self._compiled))

    def _compiled_for(self, outputs: tuple[str, ...], batch: int | None
                      ) -> tuple[Any, dict[str, int], queue.SimpleQueue]:
        key = (outputs, batch)
        if key in self._compiled:
            return self._compiled[key]
        with self._lock:
            if key not in self._compiled:
                model = self._model
                if outputs != tuple(self.output_names):  # a graph ending at the wanted outputs only
                    results = [r for r, o in zip(model.get_results(), model.outputs, strict=True)
                               if o.get_any_name() in outputs]
                    model = self._ov.Model(results, model.get_parameters(), model.get_friendly_name())
                if batch is not None and self._input_dims[0] is None and None not in self._input_dims[1:]:
                    model = model.clone()  # the graph is shared with the dynamic models
                    model.reshape({self.input_name: [batch, *self._input_dims[1:]]})
                try:
                    compiled = self._core.compile_model(model, self.device, self._config)
                except RuntimeError as exc:  # e.g. an operator this OpenVINO lacks
                    reason = _first_line(exc, last=True)
                    raise ValueError(f"{self.path}: OpenVINO cannot compile it ({reason})") from exc
                index = {o.get_any_name(): i for i, o in enumerate(compiled.outputs)}
                self._compiled[key] = (compiled, index, queue.SimpleQueue())
            return self._compiled[key]

    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        wanted = tuple(name for name in self.output_names if name in outputs)
        batch = len(x) if len(x) in self.static_batches else None
        compiled, index, idle = self._compiled_for(wanted, batch)
        try:
            request = idle.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:  # the tensor API directly: less Python per call than InferRequest.infer(dict)
            x = np.ascontiguousarray(x, dtype=self.input_dtype)
            request.set_input_tensor(self._ov.Tensor(x, shared_memory=True))
            request.infer()
            return {name: np.array(request.get_output_tensor(index[name]).data, dtype=np.float32)
                    for name in outputs}
        finally:
            idle.put(request)


# --------------------------------------------------------------------------- command lines
def add_runtime_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                          backends: bool = True) -> None:
    """``--backend``, ``--precision`` (with ``backends``) and ``--provider``: what runs an ONNX
    file, named alike in every command that serves one (vit-predict, vit-demo, export.batch,
    vit-translate, which has providers only)."""
    if backends:
        p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                       help="what runs an .onnx model: auto (the fastest that passed the file's parity "
                            "gate on this machine), onnxruntime or openvino")
        p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                       help="what it computes in: auto (bf16/fp16 only where the file's parity gate "
                            "passed), fp32, bf16 or fp16")
    p.add_argument("--provider", action="append",
                   help="onnxruntime execution provider: cpu (default), cuda, cuda:1, tensorrt or an "
                        "onnxruntime name; repeat for a preference list")


# --------------------------------------------------------------------------- one entry point
def open_backend(path: str | Path, *, backend: str = "auto", precision: str = "auto",
                 providers: str | Sequence[str | Provider] | None = None, threads: int | None = None,
                 gate: dict[str, Any] | None = None, variant: str = "fp32",
                 input_shape: tuple[str, Sequence[int]] | None = None, io_binding: bool | None = None,
                 cache_dir: str | Path | None = None) -> Runner:
    """Choose (:func:`choose`) and load the runner for ``path``. ``gate``: the file's
    ``vit.gate`` record; ``input_shape``: (input name, (C, H, W)) for TensorRT's profile."""
    if precision not in ("auto", *PRECISIONS) and precision != variant:
        raise ValueError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    where = str(path)
    ort_providers: list[Provider] = ["CPUExecutionProvider"]
    try:
        if backend != "openvino" or providers is not None:
            ort_providers = resolve_providers(providers, cache_dir=cache_dir, input_shape=input_shape)
    except ImportError:
        pass  # availability() reports onnxruntime as missing
    names = [provider_name(p) for p in ort_providers]
    gpu = any(n in GPU_PROVIDERS for n in names)
    available, missing = availability(variant=variant, tensorrt="TensorrtExecutionProvider" in names)
    if precision == variant and not variant.startswith("fp32"):
        precision = "auto"
    choice = choose(backend, precision, available=available, missing=missing, passed=verdicts(gate),
                    gpu=gpu, where=where)
    if choice.backend == "openvino":
        if providers is not None and backend == "openvino":
            logger.warning("%s: execution providers apply to onnxruntime; OpenVINO runs on the CPU", where)
        try:
            return OpenVinoRunner(path, precision=choice.precision, threads=threads)
        except ValueError as exc:  # an operator OpenVINO cannot compile: serve with onnxruntime
            if "onnxruntime" not in available:
                raise
            logger.warning("%s; falling back to onnxruntime", exc)
            choice = Choice("onnxruntime", available["onnxruntime"][0])
    if choice.precision == "fp16" and "TensorrtExecutionProvider" in names:
        ort_providers = resolve_providers(providers, fp16=True, cache_dir=cache_dir, input_shape=input_shape)
    return OrtRunner(path, ort_providers, precision=choice.precision, threads=threads, io_binding=io_binding)


def _first_line(exc: BaseException, *, last: bool = False) -> str:
    """The telling line of a runtime's multi-line error (OpenVINO puts it last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0])[:300] if lines else type(exc).__name__
