"""The PyTorch back end of :class:`export.translator.Translator`: a translation checkpoint
(``.ckpt`` or ``.safetensors``) decoded on the KV cache, greedy or beam search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vit.checkpoint import load_seq2seq
from vit.decoding import TorchStepper
from vit.seq2seq import Seq2Seq
from vit.text_codec import TextCodec

from .translator import Translator


class TorchTranslator(Translator):
    """A :class:`vit.seq2seq.Seq2Seq` and its checkpoint record (tokenizers)."""

    def __init__(self, model: Seq2Seq, record: dict[str, Any]) -> None:
        self.model = model.eval()
        self.record = record
        codec = TextCodec.from_record({**record, "config": model.config.to_dict()})
        super().__init__(codec, TorchStepper(self.model), model.config.dec_depth)

    @classmethod
    def load(cls, path: str | Path) -> TorchTranslator:
        model, record = load_seq2seq(path)
        return cls(model, record)
