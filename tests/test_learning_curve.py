"""python -m training.learning_curve (training/learning_curve.py): curves from CSVLogger files,
later sittings of a resumed run replacing earlier epochs, and a PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from training.learning_curve import main, read_curves, table
from vit.errors import DataError

HEADER = "epoch,step,train_loss_epoch,val_acc,lr\n"


def write(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_curves_join_the_sittings_of_a_resumed_run(tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", ["0,9,2.0,,", "0,9,,0.30,", ",10,,,0.001", "1,19,1.5,,", "1,19,,0.41,"])
    second = write(tmp_path / "b.csv", ["1,19,,0.42,", "2,29,1.2,,", "2,29,,0.55,"])  # epoch 1 again
    curves = read_curves([first, second], ["val_acc"])
    assert curves == {"val_acc": {0: 0.30, 1: 0.42, 2: 0.55}, "train_loss_epoch": {0: 2.0, 1: 1.5, 2: 1.2}}
    with pytest.raises(DataError, match="no values of val_bleu"):
        read_curves([first], ["val_bleu"])


def test_cli_writes_a_png_and_names_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = write(tmp_path / "m.csv", ["0,9,2.0,0.3,", "1,19,1.5,0.5,"])
    out = tmp_path / "card" / "curve.png"
    assert main([str(metrics), "-o", str(out)]) == 0
    assert Image.open(out).size[0] > 300
    assert "val_acc: 2 epochs, last (epoch 2) 0.5000" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.csv"), "-o", str(out)]) == 2
    assert "nope.csv: no such metrics file" in capsys.readouterr().err


def test_table_gives_every_nth_the_best_and_last_epoch_with_the_time_taken(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--table: accuracies in percent, each epoch's minutes and the run's wall and CPU hours so
    far from EpochClock's columns; the totals say how many epochs were timed."""
    path = tmp_path / "m.csv"
    path.write_text("epoch,train_acc,val_acc,epoch_s,epoch_cpu_s\n"
                    + "".join(f"{e},0.{e + 1},0.{e + 5},{360 * (e > 0)},{720 * (e > 0)}\n" for e in range(4))
                    .replace(",0,0\n", ",,\n"), encoding="utf-8")  # epoch 1 was not timed
    curves = read_curves([path], ["val_acc"])
    rows = table(curves, ["val_acc"], every=1).splitlines()
    assert rows[2] == "| 1 | 50.00% | 10.00% | - | - | - |"  # not timed: no totals either
    rows = table(curves, ["val_acc"], every=2).splitlines()
    assert rows[2:] == [
        "| 2 | 60.00% | 20.00% | 6.0 | 0.10 | 0.20 |",
        "| 4 (best) | 80.00% | 40.00% | 6.0 | 0.30 | 0.60 |",
        "",
        "3 of 4 epochs timed: 0.30 h wall, 0.60 h CPU",
    ]
    assert main([str(path), "-o", str(tmp_path / "c.png"), "--table", "2"]) == 0
    assert "| 4 (best) | 80.00%" in capsys.readouterr().out
