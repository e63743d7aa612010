"""vit-predict and image loading: files, folders, globs, per-file errors, atomic output."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from test_export_fixtures import tiny_checkpoint, tiny_data, tiny_onnx  # noqa: F401  (fixtures)

from export import predict
from export.images import ImageLoadError, Missing, find_images, load_image


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


@pytest.fixture
def bad_files(tmp_path, tiny_data) -> dict[str, Path]:  # noqa: F811
    good = sorted((tiny_data / "circle").glob("*.png"))[0]
    jpeg = tmp_path / "photo.jpg"
    Image.open(good).convert("RGB").resize((64, 64)).save(jpeg, quality=90)
    files = {
        "truncated": tmp_path / "truncated.jpg",
        "empty": tmp_path / "empty.png",
        "text": tmp_path / "notes.jpg",
        "bomb": tmp_path / "bomb.png",
    }
    files["truncated"].write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a picture\n")
    files["bomb"].write_bytes(_png_claiming(40000, 40000))  # 1.6 gigapixels in 100 bytes
    return files


@pytest.mark.parametrize("kind,message", [
    ("truncated", "truncated or corrupt image data"),
    ("empty", "empty file (0 bytes)"),
    ("text", "not an image format PIL can read"),
    ("bomb", "possible decompression bomb"),
])
def test_bad_files_get_a_clear_error_naming_them(bad_files, kind, message):
    path = bad_files[kind]
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_pixel_limit_is_configurable(tiny_data):  # noqa: F811
    path = sorted(tiny_data.rglob("*.png"))[0]
    assert load_image(path).size == (32, 32)
    with pytest.raises(ImageLoadError, match="1024 pixels is above the limit of 1000"):
        load_image(path, max_pixels=1000)


def test_find_images_expands_files_folders_and_globs(tiny_data, tmp_path):  # noqa: F811
    one = sorted((tiny_data / "square").glob("*.png"))[0]
    (tiny_data / "README.txt").write_text("skipped inside folders")
    found = find_images([one, tiny_data, str(tiny_data / "stripes" / "00[01].png"), tmp_path / "nope.jpg"])
    assert found[0] == one
    assert len(found) == 1 + 36 + 2 + 1 and all(p.suffix == ".png" for p in found[1:-1])
    assert found[-1] == Missing(str(tmp_path / "nope.jpg")) and "no such file" in found[-1].message
    assert find_images([str(tiny_data / "**" / "011.png")]) == sorted(tiny_data.rglob("011.png"))


def test_predict_cli_keeps_going_past_bad_files(tiny_onnx, tiny_data, bad_files, capsys):  # noqa: F811
    good = sorted((tiny_data / "circle").glob("*.png"))[:2]
    args = [str(good[0]), *map(str, bad_files.values()), str(good[1]), "missing/*.png"]
    assert predict.main(["--model", str(tiny_onnx), "--top-k", "2", "--batch-size", "3", *args]) == 1
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == args  # in order, one each
    for record in (records[0], records[5]):
        assert len(record["labels"]) == 2 and record["probabilities"][0] >= record["probabilities"][1]
    for record, path in zip(records[1:5], bad_files.values(), strict=True):
        assert record["error"].startswith(f"{path}: ") and "labels" not in record
    assert "no such file" in records[6]["error"]
    assert "5 of 7 inputs failed" in err


def test_predict_cli_writes_jsonl_and_csv_atomically(tiny_onnx, tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / "out" / "preds.jsonl"
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "square")]) == 0
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "square"), "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12 and all(len(r["labels"]) == 3 for r in records)
    table = tmp_path / "preds.csv"
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "circle"), "-o", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 12 and json.loads(rows[0]["labels"])[0] in ("circle", "square", "stripes")
    assert rows[0]["error"] == ""
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temp files left


def test_predict_cli_failure_keeps_an_existing_output(tiny_onnx, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "preds.jsonl"
    out.write_text("earlier results\n")
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict.OnnxClassifier, "predict_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        predict.main(["--model", str(tiny_onnx), str(image), "-o", str(out)])
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "preds.jsonl"]


def test_predict_cli_without_a_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "DEFAULT_MODEL", tmp_path / "models" / "cifar10_vit.onnx")
    assert predict.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vit-export" in err and "--model" in err
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x01garbage")
    assert predict.main(["--model", str(tmp_path / "broken.onnx"), str(tmp_path)]) == 2
    assert "broken.onnx: not a loadable ONNX model" in capsys.readouterr().err
