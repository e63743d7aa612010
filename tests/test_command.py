"""What every command shares (vit/command.py): --version on all five, help texts with
defaults and without reStructuredText, the closest valid name for a misspelt option."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from vit.command import closest, description, package_version, parser, plain


def _mains() -> dict[str, Callable]:
    from demo.app import main as demo
    from export.cli import main as export
    from export.predict import main as predict
    from export.translate import main as translate
    from training.train import main as train

    return {"vit-train": train, "vit-export": export, "vit-predict": predict, "vit-demo": demo,
            "vit-translate": translate}


@pytest.mark.parametrize("command", ["vit-train", "vit-export", "vit-predict", "vit-demo", "vit-translate"])
def test_every_command_has_version_and_plain_help(command: str, capsys: pytest.CaptureFixture) -> None:
    main = _mains()[command]
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"{command} {package_version()}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {command} ") and "``" not in text and not re.search(r":\w+:`", text)
    if command == "vit-train":
        assert "Vision Transformers and translators" in " ".join(text.split())  # not Lightning's generic text
        with pytest.raises(SystemExit):
            main(["fit", "--help"])  # Lightning's docstrings: ``"auto"``, :class:`...`
        text = capsys.readouterr().out
        assert "--trainer.max_epochs" in text and "``" not in text and not re.search(r":\w+:`", text)
    else:
        assert "(default:" in text


def test_plain_text_and_defaults(capsys: pytest.CaptureFixture) -> None:
    assert plain("``vit-export`` writes :mod:`export.vit_export` and :class:`~vit.vit.ViT`") == \
        "vit-export writes export.vit_export and vit.vit.ViT"
    assert description("First ``line``\nsecond.\n\nOther paragraph.") == "First line\nsecond."
    p = parser("tool", "Tool.")
    p.add_argument("--top-k", type=int, default=5, help="classes")
    p.add_argument("--name", default="x", help="a name (default: the model's)")
    p.print_help()
    text = capsys.readouterr().out
    assert "classes (default: 5)" in text and "the model's)" in text and "(default: x)" not in text


def test_misspelt_options_get_the_closest_name(capsys: pytest.CaptureFixture) -> None:
    assert closest("--top_k", ["--top-k", "--model"]) == "--top-k"
    assert closest("--zzz", ["--top-k", "--model"]) is None
    p = parser("tool", "Tool.")
    p.add_argument("--batch-size", type=int, default=1)
    with pytest.raises(SystemExit):
        p.parse_args(["--batch_size", "3"])
    assert "unrecognized arguments: --batch_size 3 (did you mean --batch-size?)" in capsys.readouterr().err


def test_file_mode_follows_the_replaced_file_or_the_umask(tmp_path: Path) -> None:
    from vit.command import file_mode

    old = os.umask(0o027)
    try:
        assert file_mode() == 0o640 and file_mode(tmp_path / "new.json") == 0o640
        existing = tmp_path / "old.json"
        existing.write_text("{}")
        existing.chmod(0o604)
        assert file_mode(existing) == 0o604
    finally:
        os.umask(old)
