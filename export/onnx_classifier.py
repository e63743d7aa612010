"""Torch-free image classification with an exported ONNX file (PIL + numpy, and onnxruntime or
OpenVINO to run the graph).

    clf = OnnxClassifier("model.onnx")            # backend="auto", precision="auto"
    clf.backend, clf.precision                    # what runs: e.g. "openvino", "bf16"
    [pred] = clf.predict("cat.jpg", top_k=3)
    pred.labels, pred.scores         # ["cat", "dog", "deer"], [0.91, 0.05, 0.01]
    pred.to_dict()     # {"path": "cat.jpg", "predictions": [{"label": "cat", "score": 0.91}, ...]}
    clf.predict("cat.jpg", return_attention=True)[0].attention   # (L, H, N, N), files with it

    for pred in clf.predict_iter(["photos/", "more/*.jpg"], errors="record"):  # lazily, as vit-predict
        print(pred.to_dict())        # a file that cannot be read: {"path": ..., "error": ...}

Paths may be files, folders (searched recursively) and glob patterns, as for ``vit-predict``.
Images are preprocessed exactly as in validation (:func:`vit.preprocess.preprocess_image`
with the :class:`~vit.preprocess.Preprocess` stored in the file), normalized as one batch.
The backend and precision are chosen by :func:`export.backends.open_backend` (``auto``: the
fastest that passed the file's parity gate on this machine). Labels alone never compute or
copy the attention output. Shape letters: B batch, L layers, H heads, N tokens, K classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vit.occlusion import masked, occluded, occlusion_map
from vit.preprocess import Preprocess, normalize, resize_and_crop, to_rgb
from vit.rise import NUM_MASKS, random_masks, rise_map
from vit.rollout import attention_rollout, class_rollout, contribution_rollout

from .backends import Runner, open_backend
from .images import ImageLoadError, Missing, find_images, load_image
from .metadata import ModelMetadata
from .providers import PROVIDER_ALIASES, Provider, resolve_providers

logger = logging.getLogger(__name__)

ImageInput = Image.Image | np.ndarray | str | Path
ERROR_MODES = ("raise", "record")
__all__ = ["OnnxClassifier", "Prediction", "ModelInfo", "resolve_providers", "PROVIDER_ALIASES", "softmax"]


@dataclass
class Prediction:
    """Top-k classes of one image, best first: ``labels``, their softmax ``scores`` and class
    ``indices``; ``logits`` (K,) over all classes; ``attention`` (L, H, N, N) when asked for
    (``return_attention=True``, or a :meth:`OnnxClassifier.decode` of outputs that hold it),
    else ``None``; ``path`` when the image came from a file. A file that
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

    @property
    def class_specific(self) -> bool:
        """Class-specific maps are available (:meth:`OnnxClassifier.class_map`): random masks
        and occlusion need only the logits, so every file has them."""
        return True

    @property
    def class_map_methods(self) -> list[str]:
        """The class-map methods this file supports, the default first."""
        every = ["rise", "occlusion"]
        return every + ["class-rollout"] if {"attention", "token_logits"} <= set(self.outputs) else every

    @classmethod
    def from_metadata(cls, meta: ModelMetadata) -> ModelInfo:
        return cls(
            class_names=list(meta.class_names), preprocess=Preprocess(**meta.preprocess),
            config=dict(meta.config), source=dict(meta.source), val_acc=meta.val_acc,
            has_attention=meta.has_attention, grid=(meta.grid_size[0], meta.grid_size[1]),
            num_prefix_tokens=meta.num_prefix_tokens, input_size=(meta.input_size[0], meta.input_size[1]),
            outputs=list(meta.outputs), variant=meta.variant,
        )


class OnnxClassifier:
    """An exported ViT: preprocessing, batched inference and top-k decoding, without torch.

    ``backend``: ``auto``, ``onnxruntime`` or ``openvino``; ``precision``: ``auto``, ``fp32``,
    ``bf16`` or ``fp16`` (see :mod:`export.backends`). ``providers`` are onnxruntime's
    (``cpu``, ``cuda``, ``cuda:1``, ``tensorrt``, or ``(name, options)`` pairs; see
    :func:`export.providers.resolve_providers`); ``intra_op_threads`` caps either runtime's
    threads; ``io_binding`` (default: on with a GPU provider) and ``cache_dir`` (TensorRT's
    engines) apply to onnxruntime.
    """

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str | Provider] | None = None,
        *,
        backend: str = "auto",
        precision: str = "auto",
        intra_op_threads: int | None = None,
        io_binding: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model file")
        meta = _read_metadata(self.path)
        try:
            self.info = ModelInfo.from_metadata(meta)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"{self.path}: malformed ONNX metadata ({exc})") from exc
        self.gate = meta.gate
        h, w = self.info.input_size
        self.runner: Runner = open_backend(  # a graph neither runtime loads: ValueError
            self.path, backend=backend, precision=precision, providers=providers,
            threads=intra_op_threads, gate=meta.gate, variant=meta.variant,
            input_shape=("images", (3, h, w)), io_binding=io_binding, cache_dir=cache_dir)
        self._output_names = list(self.runner.output_names)
        self._check_outputs()
        logger.info("%s: serving with %s", self.path, self.runtime)

    def _check_outputs(self) -> None:
        """The graph's outputs are what the metadata says: a ``logits`` output with one
        column per class name."""
        shapes = self.runner.output_shapes
        if "logits" not in shapes:
            raise ValueError(f"{self.path}: the model has no 'logits' output (has: {', '.join(shapes)})")
        if self.info.has_attention and "attention" not in shapes:
            raise ValueError(f"{self.path}: vit.outputs lists 'attention' but the model has no such output")
        width = shapes["logits"][-1] if shapes["logits"] else None
        if isinstance(width, int) and width != len(self.info.class_names):
            raise ValueError(f"{self.path}: ONNX metadata does not match the model: "
                             f"vit.class_names has {len(self.info.class_names)} names for {width} logits")

    @property
    def backend(self) -> str:
        """The runtime serving the file: ``onnxruntime`` or ``openvino``."""
        return self.runner.backend

    @property
    def precision(self) -> str:
        """What it computes in: ``fp32``, ``bf16``, ``fp16`` (or the file's ``int8``)."""
        return self.runner.precision

    @property
    def providers(self) -> list[str]:
        """onnxruntime's active providers (OpenVINO: ``["OpenVINO CPU"]``)."""
        return self.runner.providers

    @property
    def runtime(self) -> str:
        """One line for people: e.g. ``OpenVINO 2026.4.1 (CPU, bf16)``."""
        return self.runner.description

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Images -> float32 (B, 3, H, W), as validation preprocesses them."""
        return normalize(np.stack([self._crop(img) for img in _as_list(images)]), self.info.preprocess)

    def _crop(self, image: ImageInput) -> np.ndarray:
        """One image -> uint8 (crop, crop, 3) RGB, resized and center-cropped. An RGB array
        whose shorter side already has the resize length is cropped in numpy (what PIL would
        do to it, without the round trip)."""
        spec = self.info.preprocess
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 \
                and image.shape[2] == 3 and min(image.shape[:2]) == spec.resize_size:
            h, w, c = *image.shape[:2], spec.crop_size
            top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
            return image[top:top + c, left:left + c]
        return np.asarray(resize_and_crop(to_rgb(_as_pil(image)), spec))

    def predict_batch(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run preprocessed (B, 3, H, W) input; returns the model outputs by name, float32:
        ``logits`` (B, K) and, for files exported with ``--attention``, ``attention``
        (B, L, H, N, N). ``outputs``: only these (default: every output of the file); what is
        not asked for is neither computed (where the runtime can skip it) nor copied."""
        h, w = self.info.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ValueError(f"expected a (B, 3, {h}, {w}) batch, got {tuple(batch.shape)}")
        names = self._output_names if outputs is None else list(outputs)
        unknown = [n for n in names if n not in self._output_names]
        if unknown or not names:
            raise ValueError(f"outputs: {', '.join(map(repr, unknown)) or 'none'} asked for; "
                             f"{self.path} has {', '.join(self._output_names)}")
        return self.runner.run(batch, names)

    def predict(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 5, *, batch_size: int = 64,
        errors: str = "raise", return_attention: bool = False,
    ) -> list[Prediction]:
        """Classify PIL images, uint8 HWC RGB arrays, image files, folders (recursively) and
        glob patterns; one :class:`Prediction` per image, in order. ``errors="record"`` gives a
        file that cannot be read (or a path that names no image) a Prediction with ``error``
        set instead of raising. ``return_attention``: also fill ``Prediction.attention``
        (files exported with ``--attention``); otherwise it is neither computed nor copied.
        :meth:`predict_iter` yields the same one batch at a time."""
        return list(self.predict_iter(images, top_k, batch_size=batch_size, errors=errors,
                                      return_attention=return_attention))

    def predict_iter(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 5, *, batch_size: int = 64,
        errors: str = "raise", return_attention: bool = False,
    ) -> Iterator[Prediction]:
        """:meth:`predict`, lazily: paths are expanded and images read one batch at a time,
        so a folder of any size holds at most ``batch_size`` images in memory."""
        if errors not in ERROR_MODES:
            raise ValueError(f"errors must be one of {', '.join(ERROR_MODES)}, got {errors!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if return_attention and not self.info.has_attention:
            raise ValueError(f"return_attention: {self.path} has no attention output "
                             "(export it with vit-export --attention)")
        outputs = ["logits", "attention"] if return_attention else ["logits"]
        chunk: list[ImageInput | Missing] = []
        for item in _expand(images):
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self._predict_chunk(chunk, top_k, errors, outputs)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk, top_k, errors, outputs)

    def _predict_chunk(self, chunk: list[ImageInput | Missing], top_k: int, errors: str,
                       outputs: list[str]) -> list[Prediction]:
        results: list[Prediction | None] = []
        crops: list[np.ndarray] = []
        paths: list[str | None] = []
        for item in chunk:
            path = item.arg if isinstance(item, Missing) else None
            path = str(item) if isinstance(item, (str, Path)) else path
            try:
                if isinstance(item, Missing):
                    raise FileNotFoundError(item.message)
                crops.append(self._crop(item))  # (crop, crop, 3) uint8
            except (ImageLoadError, OSError, ValueError) as exc:  # ImageLoadError: a bad file
                if errors == "raise":
                    raise
                message = str(exc) if path is None or path in str(exc) else f"{path}: {exc}"
                results.append(Prediction(labels=[], scores=[], path=path, error=message))
                continue
            results.append(None)
            paths.append(path)
        if crops:
            batch = normalize(np.stack(crops), self.info.preprocess)  # (B, 3, H, W), one pass
            decoded = iter(self.decode(self.predict_batch(batch, outputs), top_k))
            for i, slot in enumerate(results):
                if slot is None:
                    results[i] = next(decoded)
            for pred, path in zip((r for r in results if r.error is None), paths, strict=True):
                pred.path = path
        return results  # type: ignore[return-value]

    def class_map(self, pixels: np.ndarray, class_index: int | Sequence[int], method: str = "rise", *,
                  num_masks: int = NUM_MASKS, batch_size: int = 64) -> np.ndarray:
        """Class-specific relevance of each patch for one preprocessed image (3, H, W):
        (Gh, Gw) for one class index, (n, Gh, Gw) for several.

        ``rise`` (every file; ``num_masks`` runs, the default and the most faithful in
        benchmarks/faithfulness.py): the class logit's mean over random copies of the image
        that show the patch minus its mean over those that blank it, half of the patches
        blanked in each copy (:mod:`vit.rise`).
        ``occlusion`` (every file; 113 runs on an 8x8 grid): how much the class logit falls
        when the patch, alone and with its neighbours in 2x2 windows, is blanked to the
        dataset's mean colour (:mod:`vit.occlusion`).
        ``class-rollout`` (files with ``token_logits``; no extra run): each final token's exact
        share of the class logit carried back to the patches along the attention rollout
        flows (:func:`vit.rollout.class_rollout`)."""
        if method not in self.info.class_map_methods:
            raise ValueError(f"method: {method!r} is not available for {self.path} "
                             f"(available: {', '.join(self.info.class_map_methods)})")
        h, w = self.info.input_size
        if pixels.shape != (3, h, w):
            raise ValueError(f"expected one preprocessed image (3, {h}, {w}), got {tuple(pixels.shape)}")
        grid = self.info.grid
        if method == "class-rollout":
            out = self.predict_batch(pixels[None], ["attention", "token_logits"])
            every = class_rollout(out["attention"], out["token_logits"], None,
                                  num_prefix_tokens=self.info.num_prefix_tokens, grid=grid)[0]  # (K, Gh, Gw)
            index = np.asarray(class_index)
            if (index < 0).any() or (index >= len(every)).any():
                raise ValueError(f"class index out of range [0, {len(every) - 1}]: {index.tolist()}")
            return every[index]
        pixels = pixels.astype(np.float32, copy=False)
        if method == "rise":
            masks = random_masks(grid, num_masks)  # (M, Gh, Gw)
            copies = masked(pixels, grid, masks)  # (M, 3, H, W)
            return rise_map(self._logits(copies, batch_size), masks, class_index)
        logits = self.predict_batch(pixels[None], ["logits"])["logits"][0]  # (K,)
        copies = occluded(pixels, grid)  # (W, 3, H, W), W windows
        return occlusion_map(logits, self._logits(copies, batch_size), class_index, grid)

    def _logits(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        """Logits (B, K) of a preprocessed batch, run ``batch_size`` images at a time."""
        return np.concatenate([self.predict_batch(batch[i:i + batch_size], ["logits"])["logits"]
                               for i in range(0, len(batch), batch_size)])

    @property
    def rollout_method(self) -> str | None:
        """What :meth:`rollout` computes for this file: ``"contribution"`` (files with the
        ``contributions`` output), ``"attention"`` (older files with attention), or None."""
        if "contributions" in self.info.outputs:
            return "contribution"
        return "attention" if self.info.has_attention else None

    def rollout(self, pixels: np.ndarray) -> np.ndarray:
        """The class-agnostic map of preprocessed images (B, 3, H, W) -> (B, Gh, Gw):
        contribution rollout where the file has the blocks' contributions, else attention
        rollout (:mod:`vit.rollout`), read as the model reads its tokens."""
        method = self.rollout_method
        if method is None:
            raise ValueError(f"{self.path} has no attention output (export it with vit-export --attention)")
        layout = dict(num_prefix_tokens=self.info.num_prefix_tokens, grid=self.info.grid,
                      pool=self.info.config.get("global_pool", "token"))
        if method == "attention":
            return attention_rollout(self.predict_batch(pixels, ["attention"])["attention"], **layout)
        names = ["contributions"] + (["token_logits"] if "token_logits" in self.info.outputs else [])
        out = self.predict_batch(pixels, names)
        return contribution_rollout(out["contributions"], out.get("token_logits"), **layout)

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


def _read_metadata(path: Path) -> ModelMetadata:
    """The file's ``vit.*`` metadata, read with ``onnx`` (whichever runtime serves it)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError family
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ValueError(f"{path}: not a loadable ONNX model ({reason})") from exc
    if not model.graph.node:
        raise ValueError(f"{path}: not a loadable ONNX model (no graph)")
    props = {p.key: p.value for p in model.metadata_props}
    return ModelMetadata.from_props(props, where=str(path))  # missing keys, bad JSON: ValueError
