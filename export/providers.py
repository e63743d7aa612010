"""onnxruntime's execution providers: short names, GPU options and the one-flavour check.

    resolve_providers("cpu")        # ["CPUExecutionProvider"]
    resolve_providers("cuda:1")     # [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    resolve_providers("tensorrt", fp16=True)
    # [("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": True, engine and timing
    #   caches, the batch profile}), ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]

TensorRT falls back to CUDA and CUDA to the CPU, per node and per session: onnxruntime
runs what a provider cannot on the next one in the list. TensorRT builds an engine per
input-shape profile, minutes for a large model, so its engines (and its timing cache) are
kept under ``cache_dir`` (default ``$XDG_CACHE_HOME/vit-service/tensorrt``) and the profile
covers batches 1 to :data:`TRT_MAX_BATCH` at once instead of one engine per batch size.

onnxruntime comes as one of several distributions (``onnxruntime``, ``onnxruntime-gpu``, ...)
that all install the same ``onnxruntime`` package: with two of them installed, whichever was
installed last silently decides which providers exist. :func:`import_onnxruntime` refuses
that with one line. Torch-free.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

# every distribution that installs the `onnxruntime` package
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                     "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-training")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "gpu": CUDA,
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}
GPU_PROVIDERS = (CUDA, TENSORRT)
TRT_MAX_BATCH = 256  # the largest batch the TensorRT profile covers without a rebuild

Provider = str | tuple[str, dict[str, Any]]
_checked = False


def installed_distributions() -> list[str]:
    """The onnxruntime distributions installed in this environment."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def check_one_flavour(found: Sequence[str] | None = None) -> None:
    """Refuse two onnxruntime distributions side by side (they overwrite each other's files)."""
    found = installed_distributions() if found is None else list(found)
    if len(found) > 1:
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in found else found[-1]
        raise RuntimeError(
            f"{' and '.join(found)} are both installed and overwrite each other's onnxruntime package; "
            f"keep one: pip uninstall -y {' '.join(found)} && pip install {keep}")


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, after :func:`check_one_flavour` (once per process)."""
    global _checked
    if not _checked:
        check_one_flavour()
        _checked = True
    import onnxruntime

    return onnxruntime


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vit-service" / "tensorrt"


def cuda_options(device_id: int) -> dict[str, Any]:
    return {"device_id": device_id}


def tensorrt_options(device_id: int, *, fp16: bool, cache_dir: str | Path | None = None,
                     input_shape: tuple[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """TensorRT provider options: device, fp16, engine and timing caches and, given the
    input's ``(name, (C, H, W))``, one profile for batches 1 to :data:`TRT_MAX_BATCH`."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    options: dict[str, Any] = {
        "device_id": device_id, "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
    }
    if input_shape is not None:
        name, dims = input_shape
        shape = lambda batch: f"{name}:{'x'.join(str(d) for d in (batch, *dims))}"
        options.update(trt_profile_min_shapes=shape(1), trt_profile_opt_shapes=shape(64),
                       trt_profile_max_shapes=shape(TRT_MAX_BATCH))
    return options


def _parse(name: str) -> tuple[str, int]:
    """``"cuda:1"`` -> (CUDAExecutionProvider, 1); full onnxruntime names pass through."""
    base, _, device = name.partition(":")
    if device and not device.isdigit():
        raise ValueError(f"provider {name!r}: the device after ':' must be a number, e.g. cuda:1")
    return PROVIDER_ALIASES.get(base.lower(), base), int(device or 0)


def resolve_providers(requested: str | Sequence[str | Provider] | None, *, fp16: bool = False,
                      cache_dir: str | Path | None = None,
                      input_shape: tuple[str, Sequence[int]] | None = None) -> list[Provider]:
    """Execution providers to ask onnxruntime for, each with its options, CPU last.

    Accepts short names (``cpu``, ``cuda``, ``cuda:1``, ``tensorrt``, ``trt:0``), onnxruntime's
    names, or ``(name, options)`` pairs passed through as they are. TensorRT brings CUDA on the
    same device as its fallback. A provider this onnxruntime build lacks is dropped with a
    warning.
    """
    if requested is None:
        return [CPU]
    items = [requested] if isinstance(requested, str) else list(requested)
    available = import_onnxruntime().get_available_providers()
    chosen: list[Provider] = []
    for item in items:
        if isinstance(item, tuple):
            full, options = item[0], dict(item[1])
            wanted: list[Provider] = [(full, options)]
        else:
            full, device = _parse(item)
            if full == TENSORRT:
                trt = tensorrt_options(device, fp16=fp16, cache_dir=cache_dir, input_shape=input_shape)
                wanted = [(TENSORRT, trt), (CUDA, cuda_options(device))]
            elif full == CUDA:
                wanted = [(CUDA, cuda_options(device))]
            else:
                wanted = [full]
        usable = [p for p in wanted if provider_name(p) in available]
        if provider_name(wanted[0]) not in available:
            fallback = provider_name(usable[0]) if usable else "the CPU"
            asked = full if not isinstance(item, str) or item == full else f"{item} ({full})"
            logger.warning("execution provider %s is not available in this onnxruntime (has: %s); "
                           "falling back to %s", asked, ", ".join(available), fallback)
        chosen += [p for p in usable if provider_name(p) not in map(provider_name, chosen)]
    if CPU not in map(provider_name, chosen):
        chosen.append(CPU)
    if any(provider_name(p) in GPU_PROVIDERS for p in chosen):
        _preload_cuda_libraries()
    return chosen


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels that ``onnxruntime-gpu[cuda,cudnn]``
    installs (onnxruntime >= 1.21 documents this call for pip-installed CUDA); a no-op
    where they are not installed or a system CUDA is used."""
    ort = import_onnxruntime()
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # missing wheels: onnxruntime then searches the system paths
            logger.debug("onnxruntime.preload_dlls: %s", exc)
