"""Where the repository keeps what ships with it (torch-free)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_CLASSIFIER = MODELS_DIR / "cifar10_vit.onnx"
DEFAULT_TRANSLATOR = MODELS_DIR / "multi30k_translator"
