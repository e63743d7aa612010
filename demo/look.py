"""How the demo page looks and what it says: the theme, the CSS, and every sentence that
describes the served model, its framing and its maps, written from the model's card so
that the words match the model (a class token or averaged patch tokens, its grid, its
input size). Nothing runs at import time.
"""

from __future__ import annotations

import html
from typing import Any

from .backend import ModelCard
from .overlay import CLASS_COLORMAP, ROLLOUT_COLORMAP, css_gradient
from .views import VIEWS

ROLLOUT, RAW, CONTRIBUTION = "Attention rollout", "One layer's attention", "Contribution rollout"


def view_choices(card: ModelCard) -> list[tuple[str, str]]:
    """The map radio's (label on the page, value in the API) pairs for the served model."""
    plain = [(ROLLOUT, VIEWS[0]), (RAW, VIEWS[1])]
    return [(CONTRIBUTION, VIEWS[2]), *plain] if card.has_contributions else plain


FRAMING_CHOICES = [("Centre crop (as in training)", "crop"), ("Whole image (padded to a square)", "fit")]

CSS = """
.gradio-container { max-width: 1360px !important; margin: 0 auto !important; }
#header h1 { margin-bottom: 0.1em; }
#header p { color: var(--body-text-color-subdued); margin-top: 0.2em; max-width: 70em; }
.note { font-size: var(--text-sm); line-height: 1.45; }
.note p { margin: 0.2em 0 0.5em 0; }
.legend { display: flex; align-items: center; gap: 0.6em; font-size: var(--text-sm);
          color: var(--body-text-color-subdued); margin: 0.1em 0 0.3em 0; }
.legend .bar { flex: 1; height: 14px; border-radius: 3px; border: 1px solid var(--border-color-primary);
               position: relative; }
.legend .mid { position: absolute; left: 50%; top: 50%; transform: translate(-50%, -50%);
               font-size: 10px; line-height: 1; color: #333; }
.legend .dim { display: inline-block; width: 1.6em; height: 12px; border-radius: 3px;
               background: #3a3a3a; border: 1px solid #fff; vertical-align: middle; }
#model-view img { image-rendering: pixelated; }
"""


def theme() -> Any:
    """The page's theme: Gradio's Soft theme in indigo and slate, its fonts served locally
    (nothing is fetched from other sites)."""
    import gradio as gr

    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate",
                          radius_size="md")


def _reads(card: ModelCard) -> str:
    """What the model answers from, in words."""
    if card.num_prefix_tokens and card.pool == "token":
        return "its class token"
    registers = f"; its {card.reg_tokens} registers are left out" if card.reg_tokens else ""
    return f"the average of its {card.grid[0] * card.grid[1]} patch tokens (it has no class token{registers})"


def header(card: ModelCard) -> str:
    """Title and the one paragraph that says what the page does, for this model."""
    h, w = card.input_size
    names = ", ".join(card.class_names)
    tokens = "a convolutional tokenizer" if card.stem == "conv" else "patches"
    return (
        "# Vision Transformer image classifier\n"
        f"Upload, paste or take a picture: the model names it as one of its {len(card.class_names)} "
        f"classes ({names}) and the maps show which parts of the picture the answer came from. "
        f"It sees a {h}×{w}-pixel square, turned by {tokens} into a {card.grid[0]}×{card.grid[1]} grid "
        f"of tokens, and answers from {_reads(card)}."
    )


def framing_note(card: ModelCard) -> str:
    """What the two framings do, with this model's sizes."""
    spec = card.preprocess
    c, r = spec.crop_size, spec.resize_size
    scaled = f"scales the shorter side to {r} pixels and keeps the middle {c}×{c} square" if r != c else \
        f"scales the shorter side to {c} pixels and keeps the middle square"
    return (f"**Framing.** The model sees only a {c}×{c} square. *Centre crop* (as in training) {scaled}: "
            "what lies outside the white frame on the maps is not seen. *Whole image* shrinks the whole "
            "picture into the square and fills the rest with the training images' average colour: "
            "nothing is cut, but the subject gets smaller.")


def map_note(card: ModelCard, view: str) -> str:
    """HTML under the main map: one sentence for the chosen view and its colour legend."""
    if not card.has_attention:
        return ('<div class="note"><p>This model file has no attention output, so there is no map: '
                "export it again with <code>vit-export ... --attention</code>.</p></div>")
    reader = "the class token" if card.num_prefix_tokens and card.pool == "token" else \
        "the tokens the model averages for its answer"
    if view == VIEWS[2] and card.has_contributions:
        counted = ", each averaged token counted by how much it moves the scores" * (card.pool == "avg")
        text = (f"<b>{CONTRIBUTION}</b> (ALTI, Ferrando et al. 2022): how much of the information in "
                f"{reader} came from each patch, following through all {card.depth} layers what each "
                "token's vector actually adds (the residual path included), not the attention weights "
                f"alone{counted}. It is the same for every class.")
    elif view == VIEWS[1]:
        text = (f"<b>{RAW}</b>: how strongly {reader} attend{'s' if reader.startswith('the class') else ''} "
                "to each patch in the chosen layer (one head, or all heads averaged). It is the same for "
                "every class.")
    else:
        text = (f"<b>{ROLLOUT}</b> (Abnar &amp; Zuidema 2020): how much of the information in {reader} came "
                f"from each patch, following the attention through all {card.depth} layers. It is the same "
                "for every class.")
    return ('<div class="note"><p>' + text + "</p>" + _legend(ROLLOUT_COLORMAP, "less", "more")
            + '<div class="legend"><span class="dim"></span> dimmed: outside the square the model sees</div>'
            + "</div>")


def class_note(card: ModelCard) -> str:
    """HTML under the class-specific map: what it means, and its legend; or why there is none."""
    if not card.class_specific:
        return ('<div class="note"><p><b>No class-specific map</b> for this model file: it lacks the '
                "outputs one needs. A checkpoint (<code>vit-demo --model run.ckpt</code>) or a newer "
                "export gives one.</p></div>")
    method = f" ({html.escape(card.class_method)})" if card.class_method else ""
    return ('<div class="note"><p><b>Evidence for the chosen class</b>: which patches raise (red) or '
            f"lower (blue) the model's score for that class{method}. Unlike rollout, it changes with the "
            "class you pick.</p>" + _legend(CLASS_COLORMAP, "lowers the score", "raises it", "no effect")
            + "</div>")


def _legend(colormap: str, low: str, high: str, middle: str | None = None) -> str:
    mid = f'<span class="mid">{middle}</span>' if middle else ""
    return (f'<div class="legend"><span>{low}</span>'
            f'<span class="bar" style="background:{css_gradient(colormap)}">{mid}</span>'
            f"<span>{high}</span></div>")


def model_panel(card: ModelCard) -> str:
    """Markdown describing the model being served."""
    spec = card.preprocess
    acc = f"{card.val_acc:.2%}" if card.val_acc is not None else "not recorded"
    tokens = "+ class token" if card.num_prefix_tokens > card.reg_tokens else "no class token"
    if card.reg_tokens:
        tokens += f", {card.reg_tokens} registers"
    tokenizer = "convolutional tokenizer" if card.stem == "conv" else "patch"
    maps = "attention rollout and one layer's attention" if card.has_attention else \
        "none (this ONNX file was exported without `--attention`)"
    if card.has_contributions:
        maps = "contribution rollout, " + maps
    if card.class_specific:
        maps += f"; class-specific: {card.class_method or 'yes'}"
    return "\n".join("- " + line for line in [
        f"**Model file:** `{card.path.name}`",
        f"**Runs on:** {card.runtime}",
        f"**Classes ({len(card.class_names)}):** {', '.join(card.class_names)}",
        f"**Input:** {card.input_size[0]}x{card.input_size[1]} RGB (shorter side resized to "
        f"{spec.resize_size}, {spec.interpolation}, center crop {spec.crop_size}; or the whole image "
        "padded to a square)",
        f"**Architecture:** ViT, {card.depth} layers x {card.num_heads} heads, {tokenizer} grid "
        f"{card.grid[0]}x{card.grid[1]} {tokens}, {card.pool} pooling",
        f"**Validation accuracy:** {acc}",
        f"**Source:** {card.source}",
        f"**Maps:** {maps}",
    ])
