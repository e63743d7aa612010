"""Shared fixtures and builders: small, generated, local data only (nothing is downloaded).

Plain helpers are imported by test files with ``from conftest import ...``; fixtures are
found by pytest. Everything expensive (trained tiny models, exports, a launched demo) is
session-scoped so that every test file reuses one copy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import random
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, imported as the script runs (its folder on the
    path, for the scripts that import a sibling)."""
    folder = str(REPO / "benchmarks")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", f"{folder}/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module
COMPAT = Path(__file__).resolve().parent / "data" / "compat"  # read-only files of an earlier release
CLASSES = ("circle", "square", "stripes")


# --------------------------------------------------------------------------- images
def draw(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A 32x32 RGB image whose class is visible: a disc, a square or stripes, on noise."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(10, size - 10, 2)
    color = rng.integers(150, 256, 3, dtype=np.uint8)
    if kind == "circle":
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = color
    elif kind == "square":
        img[cy - 6 : cy + 6, cx - 6 : cx + 6] = color
    else:
        img[(xx // 4) % 2 == 0] = color
    return Image.fromarray(img)


def make_image_folder(root: Path, per_class: int = 12, classes: tuple[str, ...] = CLASSES,
                      seed: int = 0, ext: str = "png") -> Path:
    """Write ``root/<class>/<i>.<ext>`` and return ``root``."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(name, rng).save(root / name / f"{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A tiny 3-class ImageFolder (36 PNG images, 32x32)."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster than 2 threads on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """:func:`one_thread` for builders that run outside a test function."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def photo(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """A smooth RGB test picture (gradients + a disc), so resizing is well defined."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 90)], -1).astype(np.uint8)
    img[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (min(w, h) // 4) ** 2] = rng.integers(150, 255, 3)
    return Image.fromarray(img)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


@pytest.fixture
def bad_files(tmp_path: Path, tiny_data: Path) -> dict[str, Path]:
    """A truncated JPEG, an empty file, a text file named .jpg and a decompression bomb."""
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
    files["bomb"].write_bytes(png_claiming(40000, 40000))  # 1.6 gigapixels in 100 bytes
    return files


def corrupt_files(folder: Path) -> dict[str, Path]:
    """Uploads the demo must refuse with a message: empty, text, truncated JPEG, a 64 MP bomb."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good, format="JPEG")
    files = {"empty": b"", "text": b"this is not an image\n" * 10, "truncated": good.getvalue()[:300]}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jpg"
        paths[name].write_bytes(data)
    paths["bomb"] = folder / "bomb.png"  # 8000 x 8000 = 64 MP, a few kB on disk
    Image.new("1", (8000, 8000)).save(paths["bomb"])
    return paths


# --------------------------------------------------------------------------- timm
def timm_vit(patch: int, image: int, pool: str, ls: float | None, **kw: Any) -> torch.nn.Module:
    """A timm ``VisionTransformer`` with randomized weights (also biases and layer scales)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(patch + image)
    model = VisionTransformer(
        img_size=image, patch_size=patch, embed_dim=kw.get("dim", 96), depth=kw.get("depth", 3),
        num_heads=kw.get("heads", 3), mlp_ratio=kw.get("mlp_ratio", 2.0), num_classes=10,
        global_pool=pool, class_token=pool == "token", init_values=ls,
        dynamic_img_size=kw.get("dynamic_img_size", False), reg_tokens=kw.get("reg_tokens", 0),
        no_embed_class=kw.get("no_embed_class", False),
    )
    with torch.no_grad():  # timm inits layer scale / biases to constants: randomize for a fair test
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def timm_checkpoint(tmp_path: Path, fmt: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised timm ViT (16x16 images, 5 classes, 2 heads of 32) saved as ``fmt``."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    timm_model = VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=64, depth=2,
                                   num_heads=2, mlp_ratio=2.0)
    state = {k: v.detach().clone() for k, v in timm_model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "timm_vit.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "timm_vit.pth"
        torch.save(state, path)
    return path, state


# --------------------------------------------------------------------------- a tiny ViT and its exports
TINY = dict(image_size=32, patch_size=8, num_classes=len(CLASSES), dim=64, depth=2, num_heads=2,
            mlp_ratio=2.0)
# the shipped model's kind: conv tokenizer, average pooling, no class token
TINY_AVG = dict(TINY, class_token=False, global_pool="avg", stem="conv", stem_width=16, stem_pool=4)
_EXPORTS: dict[object, tuple[Path, Any]] = {}


def train_tiny(images: Path, steps: int = 40, config: dict[str, Any] = TINY) -> tuple[Any, dict[str, Any]]:
    """A tiny ViT trained ``steps`` Adam steps on ``images`` (plain loop, CPU, ~1 s), and its
    ``vit`` record."""
    from vit.preprocess import Preprocess, preprocess_image
    from vit.vit import ViT, ViTConfig

    torch.manual_seed(0)
    spec = Preprocess()
    paths = sorted(images.rglob("*.png"))
    x = torch.from_numpy(np.stack([preprocess_image(Image.open(p), spec) for p in paths]))
    y = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    model = ViT(ViTConfig(**config))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    with single_thread():  # a model this small trains 4x faster on one thread of a busy CPU
        for _ in range(steps):
            idx = torch.randperm(len(x))[:16]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    record = {"config": model.config.to_dict(), "class_names": list(CLASSES), "preprocess": spec.to_dict(),
              "val_acc": acc, "source": f"tests: {steps} steps on {images}"}
    return model, record


def save_ckpt(model: torch.nn.Module, record: dict[str, Any], path: Path) -> Path:
    """The documented contract: ``{"vit": record, "state_dict": {"model.<name>": tensor}}``."""
    torch.save({"vit": record, "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ImageFolder of 36 images (shared by the export and serving tests)."""
    return make_image_folder(tmp_path_factory.mktemp("export_data") / "images")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """:func:`train_tiny` on :func:`tiny_data`, saved as a Lightning-style ``.ckpt``."""
    model, record = train_tiny(tiny_data)
    return save_ckpt(model, record, tmp_path_factory.mktemp("export_ckpt") / "tiny.ckpt")


@pytest.fixture(scope="session")
def tiny_avg_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """:func:`train_tiny` with :data:`TINY_AVG` (the shipped model's layout), as a ``.ckpt``."""
    model, record = train_tiny(tiny_data, config=TINY_AVG)
    return save_ckpt(model, record, tmp_path_factory.mktemp("export_ckpt") / "tiny_avg.ckpt")


@pytest.fixture(scope="session")
def tiny_onnx_token_logits(tmp_path_factory: pytest.TempPathFactory, tiny_avg_checkpoint: Path,
                           tiny_data: Path) -> Path:
    """:func:`tiny_avg_checkpoint` exported with attention: outputs logits, attention, token_logits."""
    return exported(tmp_path_factory, tiny_avg_checkpoint, tiny_data, return_attention=True)[0]


def exported(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, data: Path,
             **options: Any) -> tuple[Path, Any]:
    """Export ``checkpoint`` once per distinct ``options`` (:class:`export.vit_export.ExportOptions`
    fields) in this session; returns (onnx path, :class:`export.vit_export.ExportResult`)."""
    from export.vit_export import ExportOptions, export_checkpoint

    key = (checkpoint, tuple(sorted(options.items())))
    if key not in _EXPORTS:
        out = tmp_path_factory.mktemp("onnx") / "model.onnx"
        result = export_checkpoint(checkpoint, out, ExportOptions(verify_images=data, **options))
        assert result.passed, "\n".join(r.line() for r in result.reports)
        _EXPORTS[key] = (out, result)
    return _EXPORTS[key]


def torch_logits(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    """The logits of ``checkpoint``'s ViT on ``x`` (B, 3, H, W), through PyTorch."""
    from vit.checkpoint import load_vit

    model, _ = load_vit(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def onnx_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """Every output of the ONNX classifier at ``path`` on ``x``, through onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_data: Path) -> Path:
    """The plain float32 export (logits only)."""
    return exported(tmp_path_factory, tiny_checkpoint, tiny_data)[0]


@pytest.fixture(scope="session")
def tiny_onnx_attention(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
                        tiny_data: Path) -> Path:
    """The float32 export with the ``attention`` output."""
    return exported(tmp_path_factory, tiny_checkpoint, tiny_data, return_attention=True)[0]


# --------------------------------------------------------------------------- images decided by one patch
SIZE, PATCH = 16, 4
GRID = SIZE // PATCH
_ONE_PATCH_MODELS: dict[tuple[bool, int, int], Any] = {}


def one_patch_images(n: int, rng: np.random.Generator, *, with_empty: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Dim noise everywhere and one saturated patch at a random place: red is class 0, blue
    class 1. Class 2 has no such patch (``with_empty``), so that neither colour can be told by
    the other's absence: the evidence for classes 0 and 1 is in that one patch.
    Returns images (n, 3, 16, 16), labels (n,), and the marked patch's index (row-major; -1)."""
    x = rng.uniform(0.0, 0.5, (n, 3, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 3 if with_empty else 2, n)
    where = np.where(y < 2, rng.integers(0, GRID * GRID, n), -1)
    for i in np.flatnonzero(y < 2):
        r, c = divmod(int(where[i]), GRID)
        x[i, :, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = (
            np.array([1.0, 0.0, 0.0] if y[i] == 0 else [0.0, 0.0, 1.0], np.float32)[:, None, None])
    return torch.from_numpy(x), torch.from_numpy(y), where


def train_one_patch_vit(class_token: bool, steps: int = 60, seed: int = 0) -> Any:
    """A ViT trained briefly on :func:`one_patch_images`; built once per session and
    arguments (nothing mutates the models)."""
    key = (class_token, steps, seed)
    if key in _ONE_PATCH_MODELS:
        return _ONE_PATCH_MODELS[key]
    import torch.nn.functional as F

    from vit.vit import ViT, ViTConfig

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ViTConfig(image_size=SIZE, patch_size=PATCH, num_classes=3, dim=32, depth=2, num_heads=2,
                       mlp_ratio=2.0, class_token=class_token, global_pool="token" if class_token else "avg")
    model = ViT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(steps):
        x, y, _ = one_patch_images(64, rng)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _ONE_PATCH_MODELS[key] = model.eval()
    return _ONE_PATCH_MODELS[key]


# --------------------------------------------------------------------------- the text encoder-decoder
PAD, BOS, EOS = 0, 1, 2


def tiny_config(**overrides: Any) -> Any:
    """A :class:`vit.seq2seq.Seq2SeqConfig` small enough for many tests a second."""
    from vit.seq2seq import Seq2SeqConfig

    base = dict(src_vocab_size=23, tgt_vocab_size=19, pad_id=PAD, bos_id=BOS, eos_id=EOS, dim=32,
                num_heads=4, enc_depth=2, dec_depth=2, mlp_ratio=2.0, dropout=0.0, max_len=24)
    return Seq2SeqConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, **overrides: Any) -> Any:
    """A randomly initialised :class:`vit.seq2seq.Seq2Seq` of :func:`tiny_config`, in eval mode."""
    from vit.seq2seq import Seq2Seq

    torch.manual_seed(seed)
    return Seq2Seq(tiny_config(**overrides)).eval()


def rand_ids(b: int, n: int, vocab: int, seed: int = 1) -> torch.Tensor:
    """Token ids (b, n) of ordinary tokens (>= 3: no pad, bos or eos)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (b, n), generator=g)


# --------------------------------------------------------------------------- a toy language pair
# German-like and English-like words, one to one, so that a tiny model can learn to translate it.
LEXICON = {
    "ein": "a", "der": "the", "hund": "dog", "katze": "cat", "mann": "man", "frau": "woman",
    "kind": "child", "läuft": "runs", "springt": "jumps", "schläft": "sleeps", "sitzt": "sits",
    "schnell": "quickly", "hier": "here", "dort": "there", "rot": "red", "groß": "big",
}
DETS, NOUNS = ("ein", "der"), ("hund", "katze", "mann", "frau", "kind")
VERBS, ADVS, ADJS = ("läuft", "springt", "schläft", "sitzt"), ("schnell", "hier", "dort"), ("rot", "groß")


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (German-like, English-like) sentence pairs of the toy language."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(DETS)]
        if rng.random() < 0.4:
            words.append(rng.choice(ADJS))
        words += [rng.choice(NOUNS), rng.choice(VERBS)]
        if rng.random() < 0.5:
            words.append(rng.choice(ADVS))
        de = " ".join(words)
        en = " ".join(LEXICON[w] for w in words)
        pairs.append((de.capitalize() + ".", en.capitalize() + "."))
    return pairs


def write_corpus(root: Path, n_train: int = 200, n_val: int = 20, gz: bool = True) -> dict[str, str]:
    """``train.de(.gz)`` etc. under ``root``; returns TextDataModule path arguments."""
    import gzip

    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        pairs = toy_pairs(n, seed)
        for side, lang in ((0, "de"), (1, "en")):
            text = "".join(p[side] + "\n" for p in pairs)
            path = root / (f"{split}.{lang}.gz" if gz else f"{split}.{lang}")
            if gz:
                with gzip.open(path, "wt", encoding="utf-8") as f:
                    f.write(text)
            else:
                path.write_text(text, encoding="utf-8")
            paths[f"{split}_{'src' if lang == 'de' else 'tgt'}"] = str(path)
    return paths


PAIRS = toy_pairs(200, seed=3)  # what the toy translator learned


def train_toy_model(path: Path) -> Path:
    """A tiny translator that has learned :data:`PAIRS` (a few seconds on one thread), saved
    as project safetensors at ``path``."""
    import torch.nn.functional as F

    from training.text_data import Collate, train_tokenizer
    from vit.checkpoint import save_seq2seq
    from vit.seq2seq import Seq2Seq, Seq2SeqConfig
    from vit.text_codec import TextCodec

    with single_thread():
        codec = TextCodec(train_tokenizer([s for p in PAIRS for s in p], vocab_size=60))
        ids = codec.special_ids()
        vocab = codec.src.get_vocab_size()
        cfg = Seq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **ids, dim=32, num_heads=4,
                            enc_depth=1, dec_depth=2, mlp_ratio=2.0, dropout=0.0, max_len=40,
                            share_embeddings=True)
        torch.manual_seed(0)
        model = Seq2Seq(cfg)
        src = codec.encode_lines([p[0] for p in PAIRS], "src")
        tgt = codec.encode_lines([p[1] for p in PAIRS], "tgt")
        items = list(zip(range(len(PAIRS)), src, tgt, [p[1] for p in PAIRS], strict=True))
        batch = Collate(ids["pad_id"], ids["bos_id"])(items)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(100):
            logits = model(batch["src"], batch["tgt_in"])
            target = batch["tgt_out"].flatten()
            loss = F.cross_entropy(logits.flatten(0, 1), target, ignore_index=ids["pad_id"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.05
        save_seq2seq(model.eval(), {**codec.to_record(), "val_bleu": None, "source": "toy"}, path)
    return path


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`train_toy_model`: a translator checkpoint (``.safetensors``)."""
    return train_toy_model(tmp_path_factory.mktemp("toy") / "model.safetensors")


class CliRun:
    """What a command-line entry point did: its exit status and what it printed."""

    def __init__(self, status: int | None, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err


def run_cli(main: Any, argv: list[str]) -> CliRun:
    """Call ``main(argv)`` and capture its exit status, stdout and stderr (outside of capsys,
    for session fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return CliRun(status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def toy_ckpt(toy_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy translator as ``vit-train`` stores it: a Lightning-style ``.ckpt`` with the
    ``seq2seq`` record and the weights under ``model.``."""
    from vit.checkpoint import SEQ2SEQ_KEY, load_seq2seq

    model, record = load_seq2seq(toy_model)
    path = tmp_path_factory.mktemp("toy_ckpt") / "last.ckpt"
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({SEQ2SEQ_KEY: record, "state_dict": state, "global_step": 0}, path)
    return path


@pytest.fixture(scope="session")
def toy_export(toy_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CliRun]:
    """``vit-export`` of the toy translator's ``.ckpt``, verified on 40 of its training
    sentences (``--verify-text``): the exported folder and what the command did."""
    from export.cli import main

    root = tmp_path_factory.mktemp("onnx_translator")
    sentences = root / "verify.de"
    sentences.write_text("".join(p[0] + "\n" for p in PAIRS[:50]), encoding="utf-8")
    out = root / "toy_onnx"
    with single_thread():
        run = run_cli(main, [str(toy_ckpt), "-o", str(out), "--verify-text", str(sentences),
                             "--num-verify", "40"])
    assert run.status == 0, run.err
    return out, run


@pytest.fixture(scope="session")
def toy_onnx(toy_export: tuple[Path, CliRun]) -> Path:
    """The exported folder of the toy translator (encoder, decoder, tokenizer)."""
    return toy_export[0]


# --------------------------------------------------------------------------- vit-train
SMOKE = str(REPO / "training" / "configs" / "smoke.yaml")


def fit_args(folder: Path, cache: Path, *extra: str) -> list[str]:
    """``vit-train fit`` arguments for the smoke config on ``folder``."""
    return ["fit", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir", str(cache),
            "--trainer.enable_progress_bar", "false", *extra]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke fit (2 epochs) shared by the tests that read its checkpoints; returns its cwd."""
    from training.train import main

    work = tmp_path_factory.mktemp("smoke")
    folder = make_image_folder(work / "images")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        main(fit_args(folder, work / "cache"))
    finally:
        os.chdir(cwd)
    return work


# --------------------------------------------------------------------------- the demo
def build_demo_model(root: Path) -> dict[str, Path]:
    """A tiny ViT trained for a second on the 3-class shapes, saved as project safetensors
    and exported (with its attention output) to ONNX by the project's exporter."""
    import torch.nn.functional as F

    from export.vit_export import ExportOptions, export_checkpoint
    from vit.checkpoint import save_vit
    from vit.preprocess import Preprocess, preprocess_image
    from vit.vit import ViT, ViTConfig

    images = make_image_folder(root / "images", per_class=16)
    spec = Preprocess(crop_size=32, resize_size=32)
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((images / name).glob("*.png")):
            xs.append(preprocess_image(Image.open(path), spec))
            ys.append(label)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_classes=len(CLASSES), dim=32, depth=2, num_heads=2,
                       mlp_ratio=2.0)
    model = ViT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with single_thread():
        for _ in range(40):
            idx = torch.randint(0, len(x), (32,))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    record = {"config": config.to_dict(), "class_names": list(CLASSES), "preprocess": spec.to_dict(),
              "val_acc": 0.75, "source": "tests: 40 steps on generated shapes"}
    checkpoint = root / "tiny.safetensors"
    save_vit(model.eval(), record, checkpoint)
    result = export_checkpoint(checkpoint, root / "tiny.onnx",
                               ExportOptions(return_attention=True, num_verify=8))
    assert result.passed, result.reports
    return {"onnx": root / "tiny.onnx", "checkpoint": checkpoint, "images": images}


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """:func:`build_demo_model`: ``onnx`` (with attention), ``checkpoint`` and ``images``."""
    return build_demo_model(tmp_path_factory.mktemp("demo_model"))


@pytest.fixture(scope="session")
def demo_server(demo_model: dict[str, Path]) -> Iterator[Any]:
    """The demo app on the ONNX model, launched in-process with the options ``vit-demo``
    uses, on a free port."""
    pytest.importorskip("gradio")
    from demo.backend import load_backend

    with launched(load_backend(demo_model["onnx"])) as app:
        yield app


@contextlib.contextmanager
def launched(backend: Any) -> Iterator[Any]:
    """The demo app on ``backend``, queued and launched in-process with the options
    ``vit-demo`` uses, on a free port; closed on exit."""
    from demo.app import build_app, launch_options, queue_options

    app = build_app(backend)
    app.queue(**queue_options())
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield app
    finally:
        app.close()
