"""``vit-demo``: a Gradio page that classifies an image and shows where the model looked.

    vit-demo                                   # serves models/cifar10_vit.onnx (no torch)
    vit-demo --model run/best.ckpt             # PyTorch, adds the class-specific map
    vit-demo --host 0.0.0.0 --port 7860        # reachable from other machines

Safe by default: binds 127.0.0.1, no share link, uploads of at most 10 MB and 40
megapixels, decoded and checked by the app (a bad file gets a message, the server goes
on), no files served but the shipped examples, a bounded queue, monitoring off.
The model runs once per image; the map controls redraw from the attention kept in the
session (``gr.State``).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import gradio as gr

from vit.command import parser
from vit.paths import DEFAULT_CLASSIFIER, DEFAULT_TRANSLATOR  # the shipped models, in models/
from vit.rollout import HEAD_FUSIONS

from .backend import Backend, ModelCard, load_backend
from .views import (
    VIEWS,
    ImageFiles,
    Session,
    UploadError,
    ViewSettings,
    analyze,
    open_upload,
    render,
    render_class_map,
)

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_FILE_SIZE = "10mb"

NO_MODEL = """\
vit-demo: no model at {path}.
Train one and export it, then start the demo again:
    vit-train fit --config training/configs/cifar10.yaml
    vit-export <checkpoint from the run>.ckpt --attention -o models/cifar10_vit.onnx
or pass a model: vit-demo --model path/to/model.onnx  (or a .ckpt / .safetensors checkpoint)"""


def example_images(folder: Path = EXAMPLES_DIR) -> list[str]:
    """The shipped example photos, sorted by name."""
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES) \
        if folder.is_dir() else []


def model_panel(card: ModelCard) -> str:
    """Markdown describing the model being served."""
    spec = card.preprocess
    acc = f"{card.val_acc:.2%}" if card.val_acc is not None else "not recorded"
    tokens = f"+ {card.num_prefix_tokens} class token" if card.num_prefix_tokens else "no class token"
    tokenizer = "convolutional tokenizer" if card.stem == "conv" else "patch"
    maps = "attention rollout and raw attention" if card.has_attention else \
        "none (this ONNX file was exported without `--attention`)"
    if card.class_specific:
        maps += "; class-specific gradient-weighted rollout"
    return "\n".join("- " + line for line in [
        f"**Model file:** `{card.path.name}`, served by {card.runtime}",
        f"**Classes ({len(card.class_names)}):** {', '.join(card.class_names)}",
        f"**Input:** {card.input_size[0]}x{card.input_size[1]} RGB (shorter side resized to "
        f"{spec.resize_size}, {spec.interpolation}, center crop {spec.crop_size})",
        f"**Architecture:** ViT, {card.depth} layers x {card.num_heads} heads, {tokenizer} grid "
        f"{card.grid[0]}x{card.grid[1]} {tokens}, {card.pool} pooling",
        f"**Validation accuracy:** {acc}",
        f"**Source:** {card.source}",
        f"**Maps:** {maps}",
    ])


def _settings(view: Any, head_fusion: Any, discard_ratio: Any, start_layer: Any, layer: Any,
              head: Any, opacity: Any) -> ViewSettings:
    """Control values (from the page or an API call, unchecked) -> valid settings."""
    def number(value: Any, low: float, high: float, default: float) -> float:
        try:
            return min(max(float(value), low), high)
        except (TypeError, ValueError):
            return default

    return ViewSettings(
        view=view if view in VIEWS else VIEWS[0],
        head_fusion=head_fusion if head_fusion in HEAD_FUSIONS else "mean",
        discard_ratio=number(discard_ratio, 0.0, 0.95, 0.0),
        start_layer=int(number(start_layer, 0, 1e6, 0)), layer=int(number(layer, -1e6, 1e6, -1)),
        head=head if isinstance(head, str) and (head == "mean" or head.isdigit()) else "mean",
        opacity=number(opacity, 0.0, 1.0, 0.5),
    )


def build_app(backend: Backend, *, translator: str | Path | None = None) -> gr.Blocks:
    """The page for ``backend``; ``translator`` adds the Translate tab of
    :mod:`demo.translate_tab` for that translation model."""
    card = backend.card
    as_file = ImageFiles()  # images are answered as files: see ImageFiles
    depth, heads = max(card.depth, 1), max(card.num_heads, 1)
    maps = card.has_attention

    def classify(image: Any, view: str, head_fusion: str, discard_ratio: float, start_layer: int,
                 layer: int, head: str, opacity: float) -> tuple:
        """Classify an image: top-5 classes, the photo, and the chosen attention map (the
        page's event; scripts use /predict and /predict_batch)."""
        upload = image
        controls = (view, head_fusion, discard_ratio, start_layer, layer, head, opacity)
        if not upload:
            return None, None, None, None, gr.update(choices=[], value=None), None
        try:
            image = open_upload(upload)
        except UploadError as exc:
            raise gr.Error(str(exc), duration=8) from exc
        try:
            session = analyze(backend, image)
        except Exception as exc:  # keep serving; the log has the details
            logger.exception("classification failed")
            raise gr.Error("The model could not process this image (see the server log).") from exc
        if not maps:
            gr.Warning("This model file has no attention output: export it with --attention for maps.")
        settings = _settings(*controls)
        analysis = session.analysis
        choice = gr.update(value=analysis.labels[0]) if card.class_specific else gr.update()
        return (analysis.scores(), as_file(session.photo), as_file(render(card, session, settings)),
                as_file(render_class_map(session, analysis.class_map, settings.opacity)), choice, session)

    def redraw(session: Session | None, view: str, head_fusion: str, discard_ratio: float,
               start_layer: int, layer: int, head: str, opacity: float) -> tuple:
        """Redraw the maps with new settings, from the stored attention (no model run)."""
        if session is None:
            return None, None
        settings = _settings(view, head_fusion, discard_ratio, start_layer, layer, head, opacity)
        return (as_file(render(card, session, settings)),
                as_file(render_class_map(session, session.analysis.class_map, settings.opacity)))

    def explain(session: Session | None, label: str | None, opacity: float) -> tuple:
        """The class-specific map for any class of the model (checkpoints only, for now)."""
        if session is None or not label or label not in card.class_names:
            return None, session
        class_map = backend.explain(session.analysis.pixels, card.class_names.index(label))
        session.analysis.class_map = class_map
        return as_file(render_class_map(session, class_map, opacity)), session

    with gr.Blocks(title="ViT image classifier", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown("## Vision Transformer image classifier\nUpload, paste or take a picture; the map "
                    "shows which patches the class token drew on (attention rollout, Abnar & Zuidema 2020).")
        session = gr.State(None, time_to_live=3600)
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column(scale=2):
                    image = gr.Image(label="Image", type="filepath", height=300, elem_id="input-image",
                                     sources=["upload", "clipboard", "webcam"])
                    gr.Examples(example_images(), inputs=image, label="Examples (click one)",
                                examples_per_page=12, api_name="load_example")
                    with gr.Accordion("Model", open=False):
                        gr.Markdown(model_panel(card), elem_id="model-panel")
                with gr.Column(scale=3):
                    label = gr.Label(num_top_classes=5, label="Top-5 classes", elem_id="top5")
                    with gr.Row():
                        original = gr.Image(label="Original", type="pil", format="png", interactive=False,
                                            elem_id="original")
                        overlay = gr.Image(label="Where the model looked", type="pil", format="png",
                                           interactive=False, elem_id="overlay")
                        class_overlay = gr.Image(label="Evidence for the chosen class", type="pil",
                                                 format="png", interactive=False,
                                                 visible=card.class_specific, elem_id="class-overlay")
                    class_choice = gr.Dropdown(label="Class to explain (gradient-weighted rollout)",
                                               choices=list(card.class_names), value=None,
                                               visible=card.class_specific, interactive=True)
                    with gr.Accordion("Map settings", open=True):
                        view = gr.Radio(list(VIEWS), value=VIEWS[0], label="Map", interactive=maps)
                        with gr.Row():
                            head_fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", interactive=maps,
                                                   label="Rollout: fuse heads by")
                            discard = gr.Slider(0.0, 0.95, value=0.0, step=0.05, interactive=maps,
                                                label="Rollout: discard ratio (weakest attentions)")
                            start_layer = gr.Slider(0, depth - 1, value=0, step=1, interactive=maps,
                                                    label="Rollout: from layer")
                        with gr.Row():
                            layer = gr.Slider(0, depth - 1, value=depth - 1, step=1, interactive=maps,
                                              label="Raw attention: layer")
                            head = gr.Dropdown(["mean"] + [str(h) for h in range(heads)], value="mean",
                                               interactive=maps, label="Raw attention: head")
                        opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Map opacity")
        if translator is not None:
            from .translate_tab import build_translate_tab

            with gr.Tab("Translate"):
                build_translate_tab(translator)

        controls = [view, head_fusion, discard, start_layer, layer, head, opacity]
        outputs = [label, original, overlay, class_overlay, class_choice, session]
        image.change(classify, [image, *controls], outputs, api_name="classify", preprocess=False,
                     trigger_mode="always_last")
        gr.on([c.change for c in controls], redraw, [session, *controls], [overlay, class_overlay],
              api_name="redraw", show_progress="hidden", trigger_mode="always_last")
        class_choice.input(explain, [session, class_choice, opacity], [class_overlay, session],
                           api_name="explain")

        def predict(image: gr.FileData, top_k: int = 5) -> dict:
            """Classify one image: {"name": its file name, "predictions": [{"label": ..., "score": ...},
            ...]}, best first."""
            try:
                return classify_upload(backend, image, top_k)
            except UploadError as exc:
                raise gr.Error(str(exc)) from exc

        def predict_batch(images: list[gr.FileData], top_k: int = 5) -> list[dict]:
            """Classify several images: one {"name", "predictions"} each, in order; an image that
            cannot be read gets {"name", "error"} instead."""
            results = []
            for image in images:
                try:
                    results.append(classify_upload(backend, image, top_k))
                except UploadError as exc:
                    results.append({"name": _upload_name(image), "error": str(exc)})
            return results

        gr.api(predict, api_name="predict")
        gr.api(predict_batch, api_name="predict_batch")
    return app


def _payload(upload: Any) -> Any:
    """A Gradio ``FileData`` object as the dict :func:`open_upload` reads; anything else as is."""
    if hasattr(upload, "path") and not isinstance(upload, (str, Path)):
        return {"path": upload.path, "orig_name": getattr(upload, "orig_name", None)}
    return upload


def _upload_name(upload: Any) -> str:
    upload = _payload(upload)
    name = (upload.get("orig_name") or upload.get("path")) if isinstance(upload, dict) else upload
    return Path(str(name)).name if name else ""


def classify_upload(backend: Backend, upload: Any, top_k: int = 5) -> dict[str, Any]:
    """An uploaded image (a Gradio file payload) -> {"name", "predictions": [{"label", "score"}]}
    with at most ``top_k`` classes (clamped to 1..the number of classes)."""
    k = min(max(int(top_k), 1), len(backend.card.class_names))
    analysis = backend.analyze(open_upload(_payload(upload)), top_k=k)
    predictions = [{"label": label, "score": float(score)}
                   for label, score in zip(analysis.labels, analysis.probs, strict=True)]
    return {"name": _upload_name(upload), "predictions": predictions}


def launch_options(host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> dict[str, Any]:
    """The ``launch()`` keywords: local only, bounded uploads, nothing served but the examples."""
    return dict(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
                allowed_paths=[str(EXAMPLES_DIR)], enable_monitoring=False, show_error=False,
                state_session_capacity=256, ssr_mode=False)


def queue_options(max_size: int = 32, concurrency: int = 2) -> dict[str, Any]:
    return dict(max_size=max_size, default_concurrency_limit=concurrency)


def _parser() -> argparse.ArgumentParser:
    p = parser("vit-demo", __doc__)  # --version, defaults shown, no reStructuredText
    p.add_argument("--model", type=Path, default=None,
                   help=f"an .onnx file (served without torch) or a .ckpt/.safetensors checkpoint "
                        f"(default: {DEFAULT_CLASSIFIER})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live share link")
    p.add_argument("--translator", type=Path, default=None,
                   help=f"a translation model for the Translate tab (default: {DEFAULT_TRANSLATOR}, "
                        "when it is there)")
    p.add_argument("--queue-size", type=int, default=32, help="requests waiting at most (default 32)")
    p.add_argument("--concurrency", type=int, default=2, help="requests run at once (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = args.model or DEFAULT_CLASSIFIER
    if args.translator is None and DEFAULT_TRANSLATOR.exists():
        args.translator = DEFAULT_TRANSLATOR
    if not model.is_file():
        print(NO_MODEL.format(path=model), file=sys.stderr)
        return 2
    if args.translator is not None:
        if importlib.util.find_spec("demo.translate_tab") is None:
            print("vit-demo: --translator needs demo/translate_tab.py, which this installation lacks",
                  file=sys.stderr)
            return 2
        if not args.translator.exists():
            print(f"vit-demo: --translator {args.translator}: no such file or directory", file=sys.stderr)
            return 2
    try:
        backend = load_backend(model)
    except (OSError, ValueError) as exc:
        print(f"vit-demo: {exc}", file=sys.stderr)
        return 2
    app = build_app(backend, translator=args.translator)
    app.queue(**queue_options(args.queue_size, args.concurrency))
    app.launch(**launch_options(args.host, args.port, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
