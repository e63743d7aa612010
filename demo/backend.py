"""What the demo serves from: an exported ONNX file (the default, torch-free) or a PyTorch
checkpoint (``.ckpt``/``.safetensors``); both give the same class-specific maps (random
masks, :mod:`vit.rise`).

Both give the same :class:`ModelCard` and :class:`Analysis`; only
:class:`TorchBackend` imports torch, and only when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from vit.preprocess import Preprocess, preprocess_image
from vit.rise import NUM_MASKS

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")


@dataclass
class ModelCard:
    """What the model panel shows, and what the maps need to know about the token layout."""

    path: Path
    runtime: str
    class_names: list[str]
    preprocess: Preprocess
    input_size: tuple[int, int]
    grid: tuple[int, int]
    num_prefix_tokens: int
    pool: str
    depth: int
    num_heads: int
    stem: str  # "patch" (p x p patches) or "conv" (convolutional tokenizer)
    source: str
    val_acc: float | None
    has_attention: bool
    class_specific: bool
    class_method: str = ""  # how the class-specific map is computed, for the page's sentence
    reg_tokens: int = 0  # registers among the prefix tokens (the rest: a class token)
    has_contributions: bool = False  # contribution rollout (files exported from December 2026 on)


@dataclass
class Analysis:
    """One image through the model: top-k classes (best first), the attention weights
    (L, H, N, N) when the model gives them, and the class-specific map (Gh, Gw) of the top
    class; the blocks' contributions (L, N, N) and, for average pooling, each patch token's
    share of the logits (Gh*Gw, K), when the model gives them (contribution rollout)."""

    labels: list[str]
    probs: list[float]
    indices: list[int]
    attention: np.ndarray | None
    class_map: np.ndarray | None
    pixels: np.ndarray  # the preprocessed input (3, H, W), kept to explain other classes
    contributions: np.ndarray | None = None
    token_logits: np.ndarray | None = None

    def scores(self) -> dict[str, float]:
        """``{label: probability}`` for ``gr.Label``."""
        return dict(zip(self.labels, self.probs, strict=True))


class Backend(Protocol):
    card: ModelCard

    def analyze(self, image: Image.Image, top_k: int = 5) -> Analysis: ...

    def explain(self, pixels: np.ndarray, class_index: int) -> np.ndarray | None: ...


def _describe_source(source: Any) -> str:
    if isinstance(source, dict):
        parts = [f"{k.replace('_', ' ')}: {v}" for k, v in source.items() if v]
        return "; ".join(parts) or "unknown"
    return str(source) if source else "unknown"


# the class-specific map of both model types: the most faithful in benchmarks/faithfulness.py
RISE = (f"how much higher the class's score is, on average, when the patch is shown than when it is "
        f"blanked to the average colour, over {NUM_MASKS} copies of the image with half of the patches "
        "blanked at random (RISE, measured on the model itself)")


class LastImage:
    """Every class's map of the last image explained: one batch of random-mask runs gives
    them all, so picking another class for the same image costs no model run."""

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.maps: np.ndarray | None = None  # (K, Gh, Gw)

    def get(self, pixels: np.ndarray, class_index: int, compute: Any) -> np.ndarray:
        key = np.ascontiguousarray(pixels, np.float32).tobytes()
        if key != self.key or self.maps is None:
            self.maps, self.key = compute(), key  # (K, Gh, Gw)
        return self.maps[class_index]


class OnnxBackend:
    """Serves an ONNX file through :class:`export.OnnxClassifier` (no torch). ``backend`` and
    ``precision`` are the classifier's (``auto``: the fastest that passed the file's parity
    gate); the card says what runs. The class-specific map is ``OnnxClassifier.class_map``
    (random masks, from the file alone)."""

    def __init__(self, path: str | Path, providers: str | list[str] | None = None, *,
                 backend: str = "auto", precision: str = "auto") -> None:
        from export.onnx_classifier import OnnxClassifier

        self.classifier = OnnxClassifier(path, providers=providers, backend=backend, precision=precision)
        self.last = LastImage()
        info = self.classifier.info
        cfg = info.config
        self.card = ModelCard(
            path=Path(path), runtime=self.classifier.runtime, class_names=list(info.class_names),
            preprocess=info.preprocess,
            input_size=tuple(info.input_size), grid=tuple(info.grid),
            num_prefix_tokens=info.num_prefix_tokens, pool=cfg.get("global_pool", "token"),
            depth=int(cfg.get("depth", 0)), num_heads=int(cfg.get("num_heads", 0)),
            stem=str(cfg.get("stem", "patch")),
            source=_describe_source(info.source), val_acc=info.val_acc, has_attention=info.has_attention,
            class_specific=info.class_specific, class_method=RISE,
            reg_tokens=int(cfg.get("reg_tokens", 0)), has_contributions="contributions" in info.outputs,
        )

    def analyze(self, image: Image.Image, top_k: int = 5) -> Analysis:
        pixels = self.classifier.preprocess(image)  # (1, 3, H, W)
        outputs = self.classifier.predict_batch(pixels)  # every output
        [pred] = self.classifier.decode(outputs, top_k)
        indices = list(pred.indices or [])
        class_map = self.explain(pixels[0], indices[0]) if self.card.class_specific and indices else None
        first = {name: outputs[name][0] for name in ("contributions", "token_logits") if name in outputs}
        return Analysis(labels=pred.labels, probs=pred.scores, indices=indices,
                        attention=pred.attention, class_map=class_map, pixels=pixels[0], **first)

    def explain(self, pixels: np.ndarray, class_index: int) -> np.ndarray | None:
        """The (Gh, Gw) map of ``class_index`` for one preprocessed image (3, H, W), or None
        where the file cannot give one."""
        if not self.card.class_specific:
            return None
        every = range(len(self.card.class_names))
        return self.last.get(pixels, class_index, lambda: self.classifier.class_map(pixels, every))


class TorchBackend:
    """Serves a project checkpoint through PyTorch, with the same class-specific map as the
    ONNX path (random masks, :func:`vit.relevance.rise_relevance`)."""

    def __init__(self, path: str | Path) -> None:
        import torch  # noqa: F401  (only here: the ONNX path never imports torch)

        from vit.checkpoint import load_vit

        self.model, record = load_vit(path)
        self.last = LastImage()
        if not record.get("class_names") or not record.get("preprocess"):
            raise ValueError(
                f"{path}: has no class names or preprocessing record (a timm checkpoint?); "
                "serve a checkpoint written by vit-train, or its ONNX export"
            )
        cfg = self.model.config
        self.card = ModelCard(
            path=Path(path), runtime="PyTorch", class_names=list(record["class_names"]),
            preprocess=Preprocess(**record["preprocess"]), input_size=cfg.image_hw, grid=cfg.grid_size,
            num_prefix_tokens=cfg.num_prefix_tokens, pool=cfg.global_pool, depth=cfg.depth,
            num_heads=cfg.num_heads, stem=cfg.stem, source=_describe_source(record.get("source")),
            val_acc=record.get("val_acc"), has_attention=True, class_specific=True,
            class_method=RISE, reg_tokens=cfg.reg_tokens, has_contributions=True,
        )

    def analyze(self, image: Image.Image, top_k: int = 5) -> Analysis:
        import torch

        from vit.relevance import forward_with_contributions, token_logits

        pixels = preprocess_image(image, self.card.preprocess)  # (3, H, W)
        with torch.inference_mode():
            x = torch.from_numpy(pixels)[None]  # (1, 3, H, W)
            tokens, weights, contributions = forward_with_contributions(self.model, x)
            logits = self.model.forward_head(tokens)  # (1, K)
            shares = token_logits(self.model, tokens)[0].numpy() if self.card.pool == "avg" else None
        probs = torch.softmax(logits.double(), dim=-1)[0]  # (K,)
        top = torch.topk(probs, min(top_k, probs.numel()))
        indices = [int(i) for i in top.indices]
        return Analysis(
            labels=[self.card.class_names[i] for i in indices], probs=[float(p) for p in top.values],
            indices=indices, attention=torch.stack(weights, dim=1)[0].float().numpy(),
            class_map=self.explain(pixels, indices[0]), pixels=pixels,
            contributions=contributions[0].float().numpy(), token_logits=shares,
        )

    def explain(self, pixels: np.ndarray, class_index: int) -> np.ndarray | None:
        from vit.relevance import rise_logits
        from vit.rise import random_masks, rise_map

        def every_class() -> np.ndarray:  # (K, Gh, Gw), drawn and run only when the image is new
            masks = random_masks(self.card.grid)  # (M, Gh, Gw)
            return rise_map(rise_logits(self.model, pixels, masks), masks, range(len(self.card.class_names)))

        return self.last.get(pixels, class_index, every_class)  # (Gh, Gw) of the class


def load_backend(path: str | Path, *, backend: str = "auto", precision: str = "auto",
                 providers: str | list[str] | None = None) -> OnnxBackend | TorchBackend:
    """``.onnx`` -> :class:`OnnxBackend` (run by ``backend`` in ``precision``, onnxruntime on
    ``providers``); ``.ckpt``/``.safetensors`` -> :class:`TorchBackend` (PyTorch, fp32: the
    choice must be auto)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".onnx":
        return OnnxBackend(path, providers, backend=backend, precision=precision)
    if path.suffix in CHECKPOINT_SUFFIXES:
        if (backend, precision, providers) != ("auto", "auto", None):
            raise ValueError(f"{path}: --backend, --precision and --provider apply to .onnx files; a "
                             "checkpoint runs in PyTorch (export it with vit-export to choose)")
        return TorchBackend(path)
    raise ValueError(f"{path}: expected an .onnx file or a .ckpt/.safetensors checkpoint")
