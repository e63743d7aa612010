"""The shipped translator (models/multi30k_translator): it is what vit-translate and the demo
use without arguments, it runs without torch, its card and decoding choice are in place, and
it translates everyday German sentences into English that names what they say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from export.translate import load_translator
from vit.paths import DEFAULT_TRANSLATOR

# German sentences of the kind Multi30k describes (not from its files), and the English words
# a correct translation must contain (any one of each group)
SENTENCES = [
    ("Ein Hund läuft über eine grüne Wiese.", [("dog",), ("grass", "field", "meadow")]),
    ("Zwei Männer spielen Fußball im Park.", [("two",), ("men",), ("soccer", "football"), ("park",)]),
    ("Eine Frau fährt mit dem Fahrrad die Straße entlang.",
     [("woman",), ("bike", "bicycle"), ("street", "road")]),
    ("Ein kleines Mädchen isst ein Eis.", [("little", "small"), ("girl",), ("ice cream",)]),
    ("Ein Mann in einem roten Hemd spielt Gitarre.", [("man",), ("red",), ("shirt",), ("guitar",)]),
]


def test_the_shipped_folder_is_complete_and_chose_its_decoding() -> None:
    assert DEFAULT_TRANSLATOR.is_dir()
    for name in ("encoder.onnx", "decoder.onnx", "seq2seq.json", "tokenizer.json", "MODEL_CARD.md"):
        assert (DEFAULT_TRANSLATOR / name).is_file(), name
    meta = json.loads((DEFAULT_TRANSLATOR / "seq2seq.json").read_text(encoding="utf-8"))
    assert meta["verification"]["identical"] == meta["verification"]["sentences"] == 1014
    chosen = meta["decoding_chosen_on"]  # the validation split, by python -m export.bleu --choose
    assert meta["decoding"]["beam"] >= 1 and chosen["sentences"] == 1014 and chosen["bleu"] >= 40.0, chosen
    size = sum(p.stat().st_size for p in DEFAULT_TRANSLATOR.iterdir()) / 2**20
    assert size < 60, f"{size:.0f} MB"  # small enough to keep in the repository


@pytest.mark.parametrize("beam", [1, None])  # greedy, and the shipped decoding
def test_it_translates_what_the_sentences_say(beam: int | None) -> None:
    translator = load_translator(DEFAULT_TRANSLATOR)
    results = translator.translate([s for s, _ in SENTENCES], beam=beam)
    for (source, words), result in zip(SENTENCES, results, strict=True):
        text = result.text.lower()
        missing = [group for group in words if not any(w in text for w in group)]
        assert not missing, f"{source!r} -> {result.text!r} lacks {missing}"


def test_vit_translate_uses_it_without_torch() -> None:
    """`vit-translate "Ein Hund läuft."` from a fresh clone: no --model, torch never imported."""
    code = ("import sys; from export.translate import main\n"
            "try:\n    main(['Ein Hund läuft.'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "dog" in done.stdout.lower(), done.stdout
