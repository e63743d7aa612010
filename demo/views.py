"""The demo's work, without the page: read an upload safely, run the model once, and draw
any requested view of the stored attention without running the model again.

Gradio-free except for :class:`UploadError` messages, which the app turns into ``gr.Error``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from export.images import ImageLoadError, load_image
from vit.preprocess import to_rgb
from vit.rollout import attention_rollout, contribution_rollout, raw_attention

from .backend import Analysis, Backend, ModelCard
from .overlay import Box, draw_overlay, draw_signed_overlay, frame, model_view

logger = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # 40 megapixels: a large phone photo is ~12-50 MP; bombs are refused unread
# API values; the page lists "Contribution rollout" first, and opens on it, where the model gives it
VIEWS = ("Attention rollout", "Raw attention (one layer)", "Contribution rollout")


class UploadError(ValueError):
    """An upload that cannot be classified; the message is for the person who sent it."""


def open_upload(payload: Any, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A Gradio image payload (``{"path": ..., "orig_name": ...}``, a path or a PIL image)
    -> RGB PIL image, fully decoded. Raises :class:`UploadError` with a readable message."""
    if isinstance(payload, Image.Image):
        return to_rgb(payload)
    if isinstance(payload, dict):
        path, name = payload.get("path"), payload.get("orig_name")
    else:
        path, name = payload, None
    if not path:
        raise UploadError("No image received: upload, paste or take a picture first.")
    name = name or Path(str(path)).name
    try:
        image = load_image(path, max_pixels=max_pixels)
    except ImageLoadError as exc:
        reason = str(exc).removeprefix(str(path)).lstrip(": ").strip()
        raise UploadError(f"Cannot use {name!r}: {reason}.") from exc
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:
        raise UploadError(f"Cannot use {name!r}: unsupported image mode {image.mode} ({exc}).") from exc


@dataclass
class Session:
    """What one person's analysed image leaves behind (kept in ``gr.State``): the display
    copy of the framed photo, the model's view box on it, the model's outputs, and the
    picture the model was given (enlarged)."""

    photo: Image.Image
    box: Box
    analysis: Analysis
    model_view: Image.Image | None = None
    framing: str = "crop"
    source: str | None = None  # the upload's path, to tell whether a later request sends the same image

    @property
    def attention(self) -> np.ndarray | None:
        return self.analysis.attention


@dataclass
class ViewSettings:
    """The map controls."""

    view: str = VIEWS[0]
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    start_layer: int = 0
    layer: int = -1
    head: str = "mean"  # "mean" or a head index as text
    opacity: float = 0.5


def analyze(backend: Backend, image: Image.Image, framing: str = "crop", top_k: int = 5) -> Session:
    """Run the model once on an RGB image, framed by ``framing`` (``"crop"`` or ``"fit"``,
    see :func:`demo.overlay.frame`)."""
    spec = backend.card.preprocess
    framed = frame(image, framing, spec)
    analysis = backend.analyze(framed.model_input, top_k=top_k)
    return Session(photo=framed.display, box=framed.box, analysis=analysis,
                   model_view=model_view(analysis.pixels, spec), framing=framing)


def default_view(card: ModelCard) -> str:
    """The view the page opens on: contribution rollout where the model gives it."""
    return VIEWS[2] if card.has_contributions else VIEWS[0]


def relevance(card: ModelCard, session: Session, settings: ViewSettings) -> np.ndarray | None:
    """The (Gh, Gw) map for ``settings`` from the stored outputs (None without attention).
    Contribution rollout asked of a model without contributions is attention rollout."""
    weights = session.attention
    if weights is None:
        return None
    layout = dict(num_prefix_tokens=card.num_prefix_tokens, grid=card.grid, pool=card.pool)
    analysis = session.analysis
    if settings.view == VIEWS[2] and analysis.contributions is not None:
        shares = None if analysis.token_logits is None else analysis.token_logits[None]
        return contribution_rollout(analysis.contributions[None], shares, **layout)[0]
    depth, heads = weights.shape[0], weights.shape[1]
    if settings.view == VIEWS[1]:
        layer = min(max(int(settings.layer), -depth), depth - 1)
        head = None if settings.head in (None, "mean") else min(int(settings.head), heads - 1)
        return raw_attention(weights[None], layer, head, **layout)[0]
    start = min(max(int(settings.start_layer), 0), depth - 1)
    return attention_rollout(weights[None], head_fusion=settings.head_fusion,
                             discard_ratio=float(settings.discard_ratio), start_layer=start, **layout)[0]


def render(card: ModelCard, session: Session, settings: ViewSettings) -> Image.Image:
    """The photo with the chosen map drawn over the model's view (the photo alone when the
    model has no attention output)."""
    relevance_map = relevance(card, session, settings)
    if relevance_map is None:
        return session.photo
    return draw_overlay(session.photo, relevance_map, session.box, opacity=float(settings.opacity))


def render_class_map(session: Session, class_map: np.ndarray | None, opacity: float) -> Image.Image | None:
    """The class-specific map over the photo: red where patches raise the class's score, blue
    where they lower it (None without a map)."""
    if class_map is None:
        return None
    return draw_signed_overlay(session.photo, class_map, session.box, opacity=float(opacity))


class ImageFiles:
    """Images an answer hands to Gradio as files. Gradio rewrites the file of an in-memory
    image in its cache on every answer, so identical answers served at once could send a
    file being rewritten (a truncated image); a file path is instead copied into the cache
    once, by a rename. Here every image is written once per content, through a unique
    temporary file renamed into place, into ``folder`` (under the system's temp folder, which
    Gradio accepts outputs from); files older than ``keep_seconds`` are removed."""

    def __init__(self, folder: str | Path | None = None, keep_seconds: float = 3600.0) -> None:
        self.folder = Path(folder) if folder else Path(tempfile.gettempdir()) / "vit-demo-images"
        self.keep_seconds = keep_seconds
        self._pruned = 0.0
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image | None) -> str | None:
        if image is None:
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if path.is_file():
            os.utime(path)  # in use again: not pruned on the schedule of its first use
        else:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".png")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        self._prune()
        return str(path)

    def _prune(self) -> None:
        now = time.time()
        with self._lock:
            if now - self._pruned < 60:
                return
            self._pruned = now
        for entry in os.scandir(self.folder):
            try:
                if now - entry.stat().st_mtime > self.keep_seconds:
                    os.unlink(entry.path)
            except OSError:  # removed by another request meanwhile
                pass
