"""``vit-demo``: a Gradio page that classifies an image and shows where the model looked.

    vit-demo                                   # serves models/cifar10_vit.onnx (no torch)
    vit-demo --backend openvino --precision bf16   # choose what runs the ONNX file
    vit-demo --provider cuda                   # onnxruntime on a GPU
    vit-demo --model run/best.ckpt             # a checkpoint, through PyTorch
    vit-demo --host 0.0.0.0 --port 7860        # reachable from other machines

The page: the picture and its framing (centre crop or the whole image) on the left, with
the 32x32 picture the model was given; the top-5 classes, attention rollout and the
class-specific map (with a class picker) side by side on the right, each with one sentence
saying what it means and a colour legend; the controls of the chosen map only.

Safe by default: binds 127.0.0.1, no share link, uploads of at most 10 MB and 40
megapixels, decoded and checked by the app (a bad file gets one message, the server goes
on), only uploaded files and the shipped examples are read, no files served but the
examples, a bounded queue, monitoring off. The model runs once per image (and again only
for a new framing); the map controls redraw from the attention kept in the session
(``gr.State``).

Scripts use ``/predict`` and ``/predict_batch`` (plain ``{"name", "predictions"}`` answers),
``/classify`` (the page's answer) and ``/explain`` (the class-specific map of any class);
the API page's examples run as shown on the server's machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import gradio as gr

from export.backends import add_runtime_arguments
from vit.command import parser
from vit.paths import DEFAULT_CLASSIFIER, DEFAULT_TRANSLATOR  # the shipped models, in models/
from vit.rollout import HEAD_FUSIONS

from .backend import Backend, load_backend
from .look import (
    CSS,
    FRAMING_CHOICES,
    class_note,
    framing_note,
    header,
    map_note,
    model_panel,
    theme,
    view_choices,
)
from .overlay import FRAMINGS
from .views import (
    VIEWS,
    ImageFiles,
    Session,
    UploadError,
    ViewSettings,
    analyze,
    default_view,
    open_upload,
    render,
    render_class_map,
)

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_FILE_SIZE = "10mb"
MAP_HEIGHT = 480  # pixels: each map about 650 wide on a 1400-pixel window
FAILED = "The model could not process {name!r} (the server log has the details)."

NO_MODEL = """\
vit-demo: no model at {path}.
Train one and export it, then start the demo again:
    vit-train fit --config training/configs/cifar10.yaml
    vit-export <checkpoint from the run>.ckpt --attention -o models/cifar10_vit.onnx
or pass a model: vit-demo --model path/to/model.onnx  (or a .ckpt / .safetensors checkpoint)"""

__all__ = ["build_app", "classify_upload", "example_images", "launch_options", "main", "model_panel",
           "queue_options"]


def example_images(folder: Path = EXAMPLES_DIR) -> list[str]:
    """The shipped example photos, sorted by name."""
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES) \
        if folder.is_dir() else []


def example_captions(folder: Path = EXAMPLES_DIR) -> str:
    """Markdown naming each example and where it is from (the ``caption`` column of the
    table in ``examples/SOURCES.md``), so that nobody takes them for test images they are not."""
    table = folder / "SOURCES.md"
    if not table.is_file():
        return ""
    rows = [line.split("|")[1:-1] for line in table.read_text(encoding="utf-8").splitlines()
            if line.startswith("| `")]
    return "  \n".join(f"**{cells[0].strip().strip('`')}**: {cells[1].strip()}"
                       for cells in rows if len(cells) > 1)


def _settings(view: Any, head_fusion: Any, discard_ratio: Any, start_layer: Any, layer: Any,
              head: Any, opacity: Any) -> ViewSettings:
    """Control values (from the page or an API call, unchecked) -> valid settings."""
    def number(value: Any, low: float, high: float, default: float) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return default
        return default if value != value else min(max(value, low), high)  # NaN: the default

    return ViewSettings(
        view=view if view in VIEWS else VIEWS[0],
        head_fusion=head_fusion if head_fusion in HEAD_FUSIONS else "mean",
        discard_ratio=number(discard_ratio, 0.0, 0.95, 0.0),
        start_layer=int(number(start_layer, 0, 1e6, 0)), layer=int(number(layer, -1e6, 1e6, -1)),
        head=head if isinstance(head, str) and (head == "mean" or head.isdigit()) else "mean",
        opacity=number(opacity, 0.0, 1.0, 0.5),
    )


def _framing(value: Any) -> str:
    if value in (None, ""):
        return FRAMINGS[0]
    if value not in FRAMINGS:
        raise gr.Error(f"framing must be {' or '.join(map(repr, FRAMINGS))}, got {value!r}.")
    return str(value)


def _top_k(value: Any, num_classes: int) -> int:
    """``top_k`` from a script -> 1..num_classes; one readable message for anything else."""
    try:
        k = int(value)
        if k != float(value):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise gr.Error(f"top_k must be a whole number from 1 to {num_classes}, got {value!r}.") from None
    return min(max(k, 1), num_classes)


def build_app(backend: Backend, *, translator: str | Path | None = None) -> gr.Blocks:
    """The page for ``backend``; ``translator`` adds the Translate tab of
    :mod:`demo.translate_tab` for that translation model."""
    card = backend.card
    as_file = ImageFiles()  # images are answered as files: see ImageFiles
    depth, heads = max(card.depth, 1), max(card.num_heads, 1)
    maps = card.has_attention
    examples = example_images()

    def session_for(upload: Any, framing: str, session: Session | None = None) -> Session:
        """The analysis of ``upload`` framed by ``framing``: the session's when it holds the
        same image and framing, else one model run."""
        payload = _payload(upload)
        path = _upload_path(payload)
        if session is not None and session.source == path and session.framing == framing:
            return session
        try:
            image = open_upload(_checked(payload))
        except UploadError as exc:
            raise gr.Error(str(exc), duration=8) from exc
        try:
            session = analyze(backend, image, framing)
        except Exception as exc:  # keep serving; the log has the details
            logger.exception("classification failed")
            raise gr.Error(FAILED.format(name=_upload_name(payload))) from exc
        session.source = path
        return session

    def classify(image: Any, framing: str, view: str, head_fusion: str, discard_ratio: float,
                 start_layer: int, layer: int, head: str, opacity: float) -> tuple:
        """Classify an image: the top-5 classes, the picture the model was given, the chosen
        attention map and the class-specific map of the top class (with that class's name).
        Scripts that want labels only use /predict and /predict_batch."""
        if not image:
            return None, None, None, None, None, None
        session = session_for(image, _framing(framing))
        settings = _settings(view, head_fusion, discard_ratio, start_layer, layer, head, opacity)
        analysis = session.analysis
        chosen = analysis.labels[0] if card.class_specific else None
        return (analysis.scores(), as_file(session.model_view), as_file(render(card, session, settings)),
                as_file(render_class_map(session, analysis.class_map, settings.opacity)), chosen, session)

    def redraw(session: Session | None, view: str, head_fusion: str, discard_ratio: float,
               start_layer: int, layer: int, head: str, opacity: float) -> tuple:
        """Redraw the maps with new settings, from the stored attention (no model run)."""
        if session is None:
            return None, None
        settings = _settings(view, head_fusion, discard_ratio, start_layer, layer, head, opacity)
        return (as_file(render(card, session, settings)),
                as_file(render_class_map(session, session.analysis.class_map, settings.opacity)))

    def explain(image: Any, label: str, framing: str, opacity: float, session: Session | None) -> tuple:
        """The class-specific map of any class of the model for an image: red where patches
        raise that class's score, blue where they lower it. The page sends the image it
        already classified (no second model run); a script may send any image."""
        if not card.class_specific:
            raise gr.Error(f"{card.path.name} offers no class-specific map (its ONNX file lacks the outputs "
                           "for one); /classify gives attention rollout.")
        if label not in card.class_names:
            raise gr.Error(f"Unknown class {label!r}: choose one of {', '.join(card.class_names)}.")
        if not image:
            if session is None:
                raise gr.Error("No image received: send image=... (or classify one first).")
        else:
            session = session_for(image, _framing(framing), session)
        try:
            class_map = backend.explain(session.analysis.pixels, card.class_names.index(label))
        except Exception as exc:  # keep serving; the log has the details
            logger.exception("class map failed")
            raise gr.Error(f"The class-specific map for {label!r} could not be computed "
                           "(the server log has the details).") from exc
        session.analysis.class_map = class_map
        return as_file(render_class_map(session, class_map, _settings(None, None, 0, 0, 0, None,
                                                                      opacity).opacity)), session

    def map_controls(view: str) -> tuple:
        """Show the controls of the chosen map only (contribution rollout has none), and its sentence."""
        return (gr.update(visible=view == VIEWS[0]), gr.update(visible=view == VIEWS[1]),
                map_note(card, view))

    with gr.Blocks(title="ViT image classifier", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(header(card), elem_id="header")
        session = gr.State(None, time_to_live=3600)
        with gr.Tab("Classify"):
            with gr.Row(equal_height=False, elem_id="inputs"):
                with gr.Column(scale=5, min_width=300):
                    image = gr.Image(label="Your picture", type="filepath", height=280, elem_id="input-image",
                                     sources=["upload", "clipboard", "webcam"])
                    example_set = gr.Examples(examples, inputs=image, label="Examples: click one",
                                              examples_per_page=12, api_name="load_example")
                    gr.Markdown(example_captions(), elem_classes="note", elem_id="example-captions")
                with gr.Column(scale=3, min_width=240):
                    framing = gr.Radio(FRAMING_CHOICES, value=FRAMINGS[0], label="Framing", elem_id="framing")
                    size = f"{card.input_size[0]}×{card.input_size[1]} pixels"
                    model_view = gr.Image(label=f"What the model sees ({size})", type="filepath",
                                          format="png",
                                          interactive=False, height=200, elem_id="model-view", buttons=[])
                    gr.Markdown(framing_note(card), elem_classes="note", elem_id="framing-note")
                with gr.Column(scale=5, min_width=300):
                    label = gr.Label(num_top_classes=5, label="Top-5 classes", elem_id="top5")
                    with gr.Accordion("About this model", open=False):
                        gr.Markdown(model_panel(card), elem_id="model-panel")
            with gr.Row(equal_height=False, elem_id="maps"):
                with gr.Column(min_width=320):
                    overlay = gr.Image(label="Where the answer came from", type="filepath", format="png",
                                       interactive=False, height=MAP_HEIGHT, elem_id="overlay")
                    note = gr.HTML(map_note(card, default_view(card)), elem_id="map-note")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Map opacity (both maps)",
                                        visible=maps, elem_id="opacity")
                    with gr.Accordion("Map settings", open=False, visible=maps):
                        view = gr.Radio(view_choices(card), value=default_view(card), label="Map",
                                        elem_id="view")
                        with gr.Row(visible=default_view(card) == VIEWS[0],
                                    elem_id="rollout-controls") as rollout_controls:
                            head_fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", label="Fuse heads by")
                            discard = gr.Slider(0.0, 0.95, value=0.0, step=0.05,
                                                label="Discard the weakest attentions (ratio)")
                            start_layer = gr.Slider(0, depth - 1, value=0, step=1, label="From layer")
                        with gr.Row(visible=False, elem_id="raw-controls") as raw_controls:
                            layer = gr.Slider(0, depth - 1, value=depth - 1, step=1, label="Layer")
                            head = gr.Dropdown(["mean"] + [str(h) for h in range(heads)], value="mean",
                                               label="Head")
                    if not card.class_specific:  # one map, the whole width; say why there is no other
                        gr.HTML(class_note(card), elem_id="class-note")
                with gr.Column(min_width=320, visible=card.class_specific):
                    class_overlay = gr.Image(label="Evidence for the chosen class", type="filepath",
                                             format="png", interactive=False, height=MAP_HEIGHT,
                                             elem_id="class-overlay")
                    class_choice = gr.Dropdown(choices=list(card.class_names), value=None,
                                               label="Class to explain", interactive=True,
                                               elem_id="class-choice")
                    if card.class_specific:
                        gr.HTML(class_note(card), elem_id="class-note")
        if translator is not None:
            from .translate_tab import build_translate_tab

            with gr.Tab("Translate"):
                build_translate_tab(translator)

        controls = [view, head_fusion, discard, start_layer, layer, head, opacity]
        answers = [label, model_view, overlay, class_overlay]
        outputs = [*answers, class_choice, session]
        run = dict(fn=classify, inputs=[image, framing, *controls], outputs=outputs, preprocess=False,
                   show_progress="hidden", trigger_mode="always_last")  # the error toast is the one message
        clear = dict(fn=_blank, inputs=None, outputs=answers, queue=False, show_progress="hidden",
                     api_visibility="private")
        # a new picture (upload, paste, webcam, clear) runs the model once: .input fires once per
        # replacement where .change fires twice; the old answer goes first, so a failure leaves none
        image.input(**clear, api_name="clear_answer").then(**run, api_name="classify")
        example_set.load_input_event.then(**clear, api_name="clear_example_answer").then(
            **run, api_name="classify_example",
                                                       api_visibility="undocumented")
        framing.input(**run, api_name="reframe", api_visibility="undocumented")
        gr.on([c.change for c in controls], redraw, [session, *controls], [overlay, class_overlay],
              api_name="redraw", show_progress="hidden", trigger_mode="always_last")
        view.change(map_controls, view, [rollout_controls, raw_controls, note], api_name="map_controls",
                    api_visibility="undocumented", show_progress="hidden", queue=False)
        class_choice.input(explain, [image, class_choice, framing, opacity, session],
                           [class_overlay, session], api_name="explain", preprocess=False,
                           show_progress="hidden", trigger_mode="always_last",
                           api_visibility="public" if card.class_specific else "undocumented")

        def predict(image: gr.FileData, top_k: int = 5, framing: str = "crop") -> dict:
            """Classify one image: {"name": its file name, "predictions": [{"label": ..., "score": ...},
            ...]}, best first. framing: "crop" (the centre square, as in training) or "fit" (the
            whole image, padded to a square)."""
            return _predict_one(backend, image, _top_k(top_k, len(card.class_names)), _framing(framing))

        def predict_batch(images: list[gr.FileData], top_k: int = 5, framing: str = "crop") -> list[dict]:
            """Classify several images: one {"name", "predictions"} each, in order; an image that
            cannot be read gets {"name", "error"} instead. framing as for /predict."""
            if not isinstance(images, (list, tuple)):
                raise gr.Error("images must be a list of files, e.g. [handle_file('a.jpg'), "
                               "handle_file('b.jpg')].")
            k, how = _top_k(top_k, len(card.class_names)), _framing(framing)
            results = []
            for one in images:
                try:
                    results.append(_predict_one(backend, one, k, how))
                except gr.Error as exc:
                    results.append({"name": _upload_name(one), "error": exc.message})
            return results

        gr.api(predict, api_name="predict")
        gr.api(predict_batch, api_name="predict_batch")
        if examples:
            _api_examples(app, examples[0])
    return app


def _blank() -> tuple[None, None, None, None]:
    """No answer: the page's old answer goes before a new picture is classified."""
    return None, None, None, None


def _predict_one(backend: Backend, upload: Any, top_k: int, framing: str) -> dict[str, Any]:
    """:func:`classify_upload` with every failure as one ``gr.Error`` message."""
    try:
        return classify_upload(backend, upload, top_k, framing)
    except UploadError as exc:
        raise gr.Error(str(exc)) from exc
    except Exception as exc:  # keep serving; the log has the details
        logger.exception("classification failed")
        raise gr.Error(FAILED.format(name=_upload_name(upload))) from exc


def _api_examples(app: gr.Blocks, example: str) -> None:
    """Make the API page's example calls runnable as shown: a shipped example file (a path on
    the server's machine, where the demo listens by default) instead of an image on another
    site (/classify, /explain) or a bare ``...`` (/predict, /predict_batch)."""
    one = {"path": example, "url": example, "orig_name": Path(example).name,
           "meta": {"_type": "gradio.FileData"}}
    image_inputs = {"predict": 0, "predict_batch": 0, "classify": 0, "explain": 0}
    for fn in app.fns.values():
        if fn.api_name in image_inputs:
            component = fn.inputs[image_inputs[fn.api_name]]
            value = [one] if fn.api_name == "predict_batch" else one
            component.example_payload = component.example_inputs = (lambda v=value: v)  # type: ignore[method-assign]


def _payload(upload: Any) -> Any:
    """A Gradio ``FileData`` object as the dict :func:`open_upload` reads; anything else as is."""
    if hasattr(upload, "path") and not isinstance(upload, (str, Path)):
        return {"path": upload.path, "orig_name": getattr(upload, "orig_name", None)}
    return upload


def _upload_path(payload: Any) -> str | None:
    path = payload.get("path") if isinstance(payload, dict) else payload
    return str(path) if path else None


def _checked(payload: Any) -> Any:
    """``payload`` when its file was uploaded to this server (Gradio's upload folder) or is a
    shipped example; a path to any other file on the server is refused, never read."""
    path = _upload_path(payload)
    if path is None:
        return payload
    from gradio.utils import get_upload_folder, is_in_or_equal

    if not any(is_in_or_equal(path, root) for root in (get_upload_folder(), str(EXAMPLES_DIR))):
        raise UploadError(f"Cannot use {_upload_name(payload)!r}: not a file sent to this server; send the "
                          "file itself (gradio_client.handle_file(path)).")
    return payload


def _upload_name(upload: Any) -> str:
    upload = _payload(upload)
    name = (upload.get("orig_name") or upload.get("path")) if isinstance(upload, dict) else upload
    return Path(str(name)).name if name else ""


def classify_upload(backend: Backend, upload: Any, top_k: int = 5, framing: str = "crop") -> dict[str, Any]:
    """An uploaded image (a Gradio file payload) -> {"name", "predictions": [{"label", "score"}]}
    with at most ``top_k`` classes (clamped to 1..the number of classes), framed by ``framing``."""
    k = min(max(int(top_k), 1), len(backend.card.class_names))
    analysis = analyze(backend, open_upload(_checked(_payload(upload))), framing, top_k=k).analysis
    predictions = [{"label": label, "score": float(score)}
                   for label, score in zip(analysis.labels, analysis.probs, strict=True)]
    return {"name": _upload_name(upload), "predictions": predictions}


def launch_options(host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> dict[str, Any]:
    """The ``launch()`` keywords: local only, bounded uploads, nothing served but the examples."""
    return dict(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
                allowed_paths=[str(EXAMPLES_DIR)], enable_monitoring=False, show_error=False,
                state_session_capacity=256, ssr_mode=False, theme=theme(), css=CSS)


def queue_options(max_size: int = 32, concurrency: int = 2) -> dict[str, Any]:
    return dict(max_size=max_size, default_concurrency_limit=concurrency)


def _parser() -> argparse.ArgumentParser:
    p = parser("vit-demo", __doc__)  # --version, defaults shown, no reStructuredText
    p.add_argument("--model", type=Path, default=None,
                   help=f"an .onnx file (served without torch) or a .ckpt/.safetensors checkpoint "
                        f"(default: {DEFAULT_CLASSIFIER})")
    add_runtime_arguments(p)
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
        backend = load_backend(model, backend=args.backend, precision=args.precision, providers=args.provider)
    except (OSError, ValueError) as exc:
        print(f"vit-demo: {exc}", file=sys.stderr)
        return 2
    app = build_app(backend, translator=args.translator)
    app.queue(**queue_options(args.queue_size, args.concurrency))
    app.launch(**launch_options(args.host, args.port, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
