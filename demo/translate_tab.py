"""The demo's Translate tab: German in, English out, and the cross-attention alignment.

``build_translate_tab(translator)`` fills the current ``gr.Tab`` (or any Blocks context):
a German text box, the English translation, a beam-width slider and a heatmap of the cross-attention of one
decoder layer, averaged over heads -- source tokens (rows) x generated tokens (columns).
The layer slider redraws the map from the alignment kept in the session, without
translating again. Events: ``translate`` (button and Enter) and ``translate_alignment``.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from matplotlib.figure import Figure

from export.translate import load_translator
from export.translator import Translation, Translator

EXAMPLES = [
    "Ein Mann fährt mit dem Fahrrad eine Straße entlang.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau in einem roten Kleid singt auf einer Bühne.",
    "Kinder spielen Fußball auf einer Wiese.",
]


def alignment_figure(t: Translation | None, layer: int) -> Figure | None:
    """Heatmap of decoder layer ``layer`` (1-based) for one translation, or ``None``."""
    if t is None or t.attention is None or not t.out_tokens:
        return None
    weights = t.attention[min(max(layer, 1), t.attention.shape[0]) - 1].T  # (S, T)
    src = [tok.replace("▁", "") or "▁" for tok in t.src_tokens]
    out = [tok.replace("▁", "") or "▁" for tok in t.out_tokens]
    size = (max(4.0, 0.45 * len(out) + 1.5), max(3.0, 0.35 * len(src) + 1.2))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto")
    ax.set_xticks(np.arange(len(out)), out, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(np.arange(len(src)), src, fontsize=9)
    ax.set_xlabel("generated (English) tokens")
    ax.set_ylabel("source (German) tokens")
    ax.set_title(f"cross-attention, decoder layer {layer}, mean over heads", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return fig


def translate_text(translator: Translator, text: str, beam: int,
                   layer: int) -> tuple[str, Figure | None, Translation]:
    """One input box -> (English text, heatmap, the translation kept for redraws)."""
    sentence = " ".join((text or "").split())  # one sentence: line breaks become spaces
    (t,) = translator.translate([sentence], beam=int(beam), return_attention=True)
    if t.truncated:
        gr.Warning("The input was longer than the model's maximum length and was cut.")
    return t.text, alignment_figure(t, int(layer)), t


def build_translate_tab(translator: Translator | str | Path) -> None:
    """Add the Translate tab's components and events to the current Blocks context.
    ``translator``: a loaded :class:`~export.translate.Translator` or a model path."""
    if isinstance(translator, (str, Path)):
        translator = load_translator(translator)
    n_layers = translator.num_layers
    kept = gr.State(None, time_to_live=3600)
    with gr.Row():
        with gr.Column():
            source = gr.Textbox(label="German", lines=3, placeholder="Ein Hund läuft über die Wiese.",
                                elem_id="translate-source")
            with gr.Row():
                beam = gr.Slider(1, 8, value=4, step=1, label="Beam width")
                button = gr.Button("Translate", variant="primary")
            gr.Examples(EXAMPLES, inputs=source, label="Examples", api_name="translate_example")
        with gr.Column():
            target = gr.Textbox(label="English", lines=3, interactive=False, elem_id="translate-target")
            layer = gr.Slider(1, n_layers, value=n_layers, step=1, label="Decoder layer of the alignment")
            heatmap = gr.Plot(label="Cross-attention", show_label=False, elem_id="translate-map")

    def run(text: str, beam_width: float, layer_no: float) -> tuple:
        if not (text or "").strip():
            return "", None, None
        return translate_text(translator, text, int(beam_width), int(layer_no))

    def redraw(t: Translation | None, layer_no: float) -> Figure | None:
        return alignment_figure(t, int(layer_no))

    gr.on([button.click, source.submit], run, [source, beam, layer], [target, heatmap, kept],
          api_name="translate", trigger_mode="always_last")
    layer.change(redraw, [kept, layer], heatmap, api_name="translate_alignment", show_progress="hidden",
                 trigger_mode="always_last")
