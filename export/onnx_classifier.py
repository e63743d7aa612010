"""Torch-free image classification with an exported ONNX file (onnxruntime + PIL + numpy).

    clf = OnnxClassifier("model.onnx")
    [pred] = clf.predict("cat.jpg", top_k=3)
    pred.labels, pred.scores         # ["cat", "dog", "deer"], [0.91, 0.05, 0.01]
    pred.to_dict()     # {"path": "cat.jpg", "predictions": [{"label": "cat", "score": 0.91}, ...]}

    for pred in clf.predict_iter(["photos/", "more/*.jpg"], errors="record"):  # lazily, as vit-predict
        print(pred.to_dict())        # a file that cannot be read: {"path": ..., "error": ...}

Paths may be files, folders (searched recursively) and glob patterns, as for ``vit-predict``.
Images are preprocessed exactly as in validation (:func:`vit.preprocess.preprocess_image`
with the :class:`~vit.preprocess.Preprocess` stored in the file). Shape letters: B batch,
L layers, H heads, N tokens, K classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from vit.preprocess import Preprocess, preprocess_image

from .images import ImageLoadError, Missing, find_images, load_image
from .metadata import ModelMetadata

logger = logging.getLogger(__name__)

ImageInput = Image.Image | np.ndarray | str | Path
ERROR_MODES = ("raise", "record")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}


@dataclass
class Prediction:
    """Top-k classes of one image, best first: ``labels``, their softmax ``scores`` and class
    ``indices``; ``logits`` (K,) over all classes; ``attention`` (L, H, N, N) when the file has
    an attention output, else ``None``; ``path`` when the image came from a file. A file that
    could not be classified (``errors="record"``) has ``error`` set and no classes."""

    labels: list[str]
    scores: list[float]
    logits: np.ndarray | None = None
    attention: np.ndarray | None = None
    indices: list[int] | None = None
    path: str | None = None
    error: str | None = None

    def to_dict(self, digits: int | None = None) -> dict[str, Any]:
        """``{"path": ..., "predictions": [{"label": ..., "score": ...}, ...]}`` (the shape of
        Hugging Face pipelines and of ``vit-predict``'s records; ``path`` only when known), or
        ``{"path": ..., "error": ...}``. ``digits`` rounds the scores."""
        record: dict[str, Any] = {} if self.path is None else {"path": self.path}
        if self.error is not None:
            record["error"] = self.error
            return record
        record["predictions"] = [
            {"label": label, "score": score if digits is None else round(score, digits)}
            for label, score in zip(self.labels, self.scores, strict=True)
        ]
        return record


@dataclass
class ModelInfo:
    """What the ONNX file says about the model it holds."""

    class_names: list[str]
    preprocess: Preprocess
    config: dict[str, Any]
    source: dict[str, Any]
    val_acc: float | None
    has_attention: bool
    grid: tuple[int, int]
    num_prefix_tokens: int
    input_size: tuple[int, int]
    outputs: list[str]
    variant: str

    @classmethod
    def from_metadata(cls, meta: ModelMetadata) -> ModelInfo:
        return cls(
            class_names=list(meta.class_names), preprocess=Preprocess(**meta.preprocess),
            config=dict(meta.config), source=dict(meta.source), val_acc=meta.val_acc,
            has_attention=meta.has_attention, grid=(meta.grid_size[0], meta.grid_size[1]),
            num_prefix_tokens=meta.num_prefix_tokens, input_size=(meta.input_size[0], meta.input_size[1]),
            outputs=list(meta.outputs), variant=meta.variant,
        )


def resolve_providers(requested: str | Sequence[str] | None) -> list[str]:
    """Execution providers to ask onnxruntime for, CPU last as the fallback.

    Accepts short names (``cpu``, ``cuda``, ``tensorrt``) or onnxruntime's names. A provider
    this onnxruntime build lacks is dropped with a warning.
    """
    if requested is None:
        return ["CPUExecutionProvider"]
    names = [requested] if isinstance(requested, str) else list(requested)
    available = ort.get_available_providers()
    chosen: list[str] = []
    for name in names:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            logger.warning("execution provider %s is not available in this onnxruntime (has: %s); "
                           "falling back to CPU", name, ", ".join(available))
        elif full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxClassifier:
    """An exported ViT: preprocessing, batched inference and top-k decoding, without torch."""

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] | None = None,
        *,
        intra_op_threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model file")
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        wanted = resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own classes for bad protobufs/graphs
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ValueError(f"{self.path}: not a loadable ONNX model ({reason})") from exc
        active = self.session.get_providers()
        for name in wanted[:-1]:
            if name not in active:
                logger.warning("%s could not start %s (no device?); running on %s",
                               self.path, name, ", ".join(active))
        props = self.session.get_modelmeta().custom_metadata_map
        meta = ModelMetadata.from_props(props, where=str(self.path))  # missing keys, bad JSON: ValueError
        try:
            self.info = ModelInfo.from_metadata(meta)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"{self.path}: malformed ONNX metadata ({exc})") from exc
        model_input = self.session.get_inputs()[0]
        self._input_name = model_input.name
        self._input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._check_outputs()

    def _check_outputs(self) -> None:
        """The graph's outputs are what the metadata says: a ``logits`` output with one
        column per class name."""
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "logits" not in outputs:
            raise ValueError(f"{self.path}: the model has no 'logits' output (has: {', '.join(outputs)})")
        if self.info.has_attention and "attention" not in outputs:
            raise ValueError(f"{self.path}: vit.outputs lists 'attention' but the model has no such output")
        shape = outputs["logits"].shape
        width = shape[-1] if shape else None
        if isinstance(width, int) and width != len(self.info.class_names):
            raise ValueError(f"{self.path}: ONNX metadata does not match the model: "
                             f"vit.class_names has {len(self.info.class_names)} names for {width} logits")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Images -> float32 (B, 3, H, W), as validation preprocesses them."""
        spec = self.info.preprocess
        return np.stack([preprocess_image(_as_pil(img), spec) for img in _as_list(images)])

    def predict_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run preprocessed (B, 3, H, W) input; returns every model output by name:
        ``logits`` (B, K) and, for files exported with ``--attention``, ``attention``
        (B, L, H, N, N)."""
        h, w = self.info.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ValueError(f"expected a (B, 3, {h}, {w}) batch, got {tuple(batch.shape)}")
        outputs = self.session.run(None, {self._input_name: batch.astype(self._input_dtype, copy=False)})
        named = zip(self._output_names, outputs, strict=True)
        return {name: np.asarray(out, dtype=np.float32) for name, out in named}

    def predict(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 5, *, batch_size: int = 64,
        errors: str = "raise",
    ) -> list[Prediction]:
        """Classify PIL images, uint8 HWC RGB arrays, image files, folders (recursively) and
        glob patterns; one :class:`Prediction` per image, in order. ``errors="record"`` gives a
        file that cannot be read (or a path that names no image) a Prediction with ``error``
        set instead of raising. :meth:`predict_iter` yields the same one batch at a time."""
        return list(self.predict_iter(images, top_k, batch_size=batch_size, errors=errors))

    def predict_iter(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 5, *, batch_size: int = 64,
        errors: str = "raise",
    ) -> Iterator[Prediction]:
        """:meth:`predict`, lazily: paths are expanded and images read one batch at a time,
        so a folder of any size holds at most ``batch_size`` images in memory."""
        if errors not in ERROR_MODES:
            raise ValueError(f"errors must be one of {', '.join(ERROR_MODES)}, got {errors!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        chunk: list[ImageInput | Missing] = []
        for item in _expand(images):
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self._predict_chunk(chunk, top_k, errors)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk, top_k, errors)

    def _predict_chunk(self, chunk: list[ImageInput | Missing], top_k: int, errors: str) -> list[Prediction]:
        results: list[Prediction | None] = []
        arrays: list[np.ndarray] = []
        paths: list[str | None] = []
        for item in chunk:
            path = item.arg if isinstance(item, Missing) else None
            path = str(item) if isinstance(item, (str, Path)) else path
            try:
                if isinstance(item, Missing):
                    raise FileNotFoundError(item.message)
                arrays.append(preprocess_image(_as_pil(item), self.info.preprocess)[None])  # (1, 3, H, W)
            except (ImageLoadError, OSError, ValueError) as exc:  # ImageLoadError: a bad file
                if errors == "raise":
                    raise
                message = str(exc) if path is None or path in str(exc) else f"{path}: {exc}"
                results.append(Prediction(labels=[], scores=[], path=path, error=message))
                continue
            results.append(None)
            paths.append(path)
        if arrays:
            decoded = iter(self.decode(self.predict_batch(np.concatenate(arrays)), top_k))
            for i, slot in enumerate(results):
                if slot is None:
                    results[i] = next(decoded)
            for pred, path in zip((r for r in results if r.error is None), paths, strict=True):
                pred.path = path
        return results  # type: ignore[return-value]

    def decode(self, outputs: dict[str, np.ndarray], top_k: int = 5) -> list[Prediction]:
        """Model outputs of a batch -> one :class:`Prediction` per row."""
        logits = outputs["logits"]  # (B, K)
        probs = softmax(logits)
        k = max(1, min(top_k, logits.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (B, k)
        attention = outputs.get("attention")
        names = self.info.class_names
        return [
            Prediction(
                labels=[names[j] for j in order[i]], scores=[float(probs[i, j]) for j in order[i]],
                logits=logits[i], attention=None if attention is None else attention[i],
                indices=[int(j) for j in order[i]],
            )
            for i in range(logits.shape[0])
        ]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (computed in float64), (B, K) -> (B, K)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    if isinstance(images, (Image.Image, str, Path)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]  # (B, H, W, C) or one image
    return list(images)


def _expand(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput | Missing]:
    """Images in order, with every path argument expanded as ``vit-predict`` expands it
    (:func:`export.images.find_images`: a file as given, a folder's images, a pattern's
    matches, or a :class:`~export.images.Missing` entry)."""
    if isinstance(images, (Image.Image, str, Path, np.ndarray)):
        yield from _expand_one(images) if not isinstance(images, np.ndarray) else _as_list(images)
        return
    for image in images:
        yield from _expand_one(image)


def _expand_one(image: ImageInput | Missing) -> list[ImageInput | Missing]:
    if isinstance(image, (str, Path)):
        return find_images([image])
    return [image]


def _as_pil(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        channels = image.shape[2] if image.ndim == 3 else 1
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or channels not in (1, 3, 4):
            raise ValueError(
                "expected a uint8 image array (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, "
                f"got {image.dtype} {tuple(image.shape)}"
            )
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    raise TypeError(f"cannot classify a {type(image).__name__}; pass a PIL image, a uint8 array or a path")
