"""The demo's Translate tab (demo/translate_tab.py): named events, translation and the
alignment heatmap, a beam slider for every back end."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from conftest import PAIRS
from matplotlib.figure import Figure

from demo.translate_tab import alignment_figure, build_translate_tab, translate_text
from export.translate import load_translator

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tab_has_named_events(toy_model: Path) -> None:
    with gr.Blocks() as app:
        with gr.Tab("Translate"):
            build_translate_tab(str(toy_model))
    names = {dep.get("api_name") for dep in app.config["dependencies"]}
    assert {"translate", "translate_alignment"} <= names
    assert all(dep.get("api_name") for dep in app.config["dependencies"])


def test_translate_text_and_heatmap(toy_model: Path) -> None:
    translator = load_translator(toy_model)
    text, fig, kept = translate_text(translator, PAIRS[0][0] + "\n", beam=3, layer=2)
    assert text == PAIRS[0][1]
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "<eos>"
    assert len(ax.get_xticklabels()) == len(kept.out_tokens)
    assert "layer 1" in alignment_figure(kept, 1).axes[0].get_title()
    assert alignment_figure(None, 1) is None


@pytest.mark.parametrize("backend", ["checkpoint", "onnx"])
def test_beam_slider_is_interactive_for_every_back_end(backend: str, toy_model: Path, toy_onnx: Path) -> None:
    path = toy_model if backend == "checkpoint" else toy_onnx
    with gr.Blocks() as app:
        build_translate_tab(path)
    components = app.config["components"]
    sliders = {c["props"].get("label"): c["props"] for c in components if c.get("type") == "slider"}
    beam = sliders["Beam width"]
    assert beam["value"] == 4 and beam.get("interactive") is not False  # unset: interactive as an input
    assert (beam["minimum"], beam["maximum"]) == (1, 8)
    text, _, kept = translate_text(load_translator(path), PAIRS[7][0], beam=4, layer=2)
    assert text == PAIRS[7][1] and kept.attention.shape[0] == 2
