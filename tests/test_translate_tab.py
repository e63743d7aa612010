"""The demo's Translate tab: named events, translation and the alignment heatmap."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from matplotlib.figure import Figure
from test_translation_cli import PAIRS, train_toy_model

from demo.translate_tab import alignment_figure, build_translate_tab, translate_text
from export.translate import load_translator


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_toy_model(tmp_path_factory.mktemp("toy") / "model.safetensors")


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
