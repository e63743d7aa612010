"""What an exported file says about itself (export/metadata.py): the vit.* metadata props
read back what the exporter wrote; errors name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from export.metadata import FORMAT_VERSION, OPSET, SEQ2SEQ_FILES, ModelMetadata, read_metadata, set_metadata
from export.vit_onnx import build_metadata
from vit.checkpoint import load_vit


def test_metadata_reads_back_what_was_written(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    model, record = load_vit(tiny_checkpoint)
    written = build_metadata(model, record, checkpoint=tiny_checkpoint, return_attention=False)
    read = read_metadata(tiny_onnx)
    assert read.source.pop("exported_at") and written.source.pop("exported_at")
    assert written.gate is None and read.gate["count"] == 36  # gated on the verify images at export
    read.gate = None
    assert read == written
    assert read.class_names == record["class_names"] and read.config == record["config"]
    assert read.preprocess == record["preprocess"] and read.val_acc == record["val_acc"]
    assert read.grid_size == [4, 4] and read.num_prefix_tokens == 1 and read.input_size == [32, 32]
    assert read.outputs == ["logits"] and read.variant == "fp32"
    assert read.source["checkpoint"] == str(tiny_checkpoint)
    # plain JSON under vit.* keys, readable by any ONNX tool
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert ModelMetadata.from_props(props) == read_metadata(tiny_onnx)
    assert json.loads(props["vit.gate"])["results"]


def test_metadata_errors_name_the_key() -> None:
    good = ModelMetadata(["a", "b"], [32, 32], {}, {"num_classes": 2}, 1, [4, 4], ["logits"]).to_props()
    with pytest.raises(ValueError, match="missing ONNX metadata vit.class_names"):
        ModelMetadata.from_props({k: v for k, v in good.items() if k != "vit.class_names"}, "m.onnx")
    with pytest.raises(ValueError, match="vit.grid_size is not valid JSON"):
        ModelMetadata.from_props({**good, "vit.grid_size": "[4,"}, "m.onnx")
    with pytest.raises(ValueError, match="2 classes"):
        ModelMetadata.from_props({**good, "vit.class_names": '["a"]'}, "m.onnx")


def test_read_metadata_errors_name_the_file(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such ONNX file"):
        read_metadata(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(ValueError, match="junk.onnx: not a readable ONNX file"):
        read_metadata(tmp_path / "junk.onnx")
    model = onnx.load(str(tiny_onnx))
    newer = ModelMetadata(**{**read_metadata(tiny_onnx).__dict__, "format": FORMAT_VERSION + 1})
    set_metadata(model, newer)
    onnx.save(model, str(tmp_path / "newer.onnx"))
    with pytest.raises(ValueError, match="newer.onnx: metadata format 2 is newer than this code reads"):
        read_metadata(tmp_path / "newer.onnx")


def test_set_metadata_keeps_foreign_entries_and_replaces_its_own(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    entry = model.metadata_props.add()
    entry.key, entry.value = "other.tool", "kept"
    meta = read_metadata(tiny_onnx)
    set_metadata(model, ModelMetadata(**{**meta.__dict__, "variant": "int8"}))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["other.tool"] == "kept" and props["vit.variant"] == '"int8"'
    assert sum(p.key == "vit.variant" for p in model.metadata_props) == 1


def test_constants_every_exporter_shares() -> None:
    assert OPSET == 18
    assert SEQ2SEQ_FILES == ("encoder.onnx", "decoder.onnx", "seq2seq.json")
