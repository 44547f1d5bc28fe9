"""Where the bundled files (default model, ONNX MTCNN, model card) are: inside the installed package
(`faceverify/weights/` in the wheel) or, in a checkout, the repository's `weights/`."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
SEARCH_PATH = (_PACKAGE / "weights", _PACKAGE.parent / "weights")


def weights_dir() -> Path:
    """The first folder of `SEARCH_PATH` that holds the bundled MTCNN (the installed one first)."""
    for folder in SEARCH_PATH:
        if (folder / "mtcnn").is_dir():
            return folder
    return SEARCH_PATH[0]
