"""`faceverify export --web DIR`: a static page that verifies two photos in the browser.

The folder holds the page (`index.html`, its module and style, from `page/`), the end-to-end graph
(`MODEL_FILE`, its weights in fp16), `model.json` (what the page needs from the model's metadata), onnxruntime-web's
wasm files under `ort/` and the licences. Photos are decoded and run in the page: nothing is
uploaded, nothing is fetched from elsewhere (onnxruntime-web comes from the pinned npm package
`make js` installs in `web/`, copied here; the page points its wasm loader at `ort/`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import __version__
from ..errors import ModelError
from ..images import MAX_PIXELS
from ..metadata import ModelMetadata
from .model import CENTRAL, export_end_to_end

#: the onnxruntime-web release the page is built for: web/package.json pins the same (a test checks)
ORT_WEB_VERSION = "1.31.1"
#: what the wasm execution provider needs from onnxruntime-web's dist/: the ESM build of the wasm
#: backend and the (threaded, SIMD) wasm binary with its loader, which the backend imports itself
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_WEB_LICENSE = "onnxruntime-web-LICENSE.txt"
MODEL_FILE = "faceverify-e2e.onnx"
PAGE = Path(__file__).resolve().parent / "page"
PAGE_FILES = ("index.html", "faceverify-web.js", "style.css")
CHECKOUT_RUNTIME = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "onnxruntime-web"


def find_runtime(runtime: str | Path | None = None) -> Path:
    """onnxruntime-web's package folder: `runtime`, else $FACEVERIFY_ORT_WEB, else the checkout's
    `web/node_modules/onnxruntime-web`; it must be the pinned release."""
    folder = Path(runtime or os.environ.get("FACEVERIFY_ORT_WEB") or CHECKOUT_RUNTIME)
    try:
        version = json.loads((folder / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"onnxruntime-web not found at {folder}: run `make js` (npm ci in web/) in a checkout, or "
                         f"`npm install onnxruntime-web@{ORT_WEB_VERSION}` and pass its folder with --ort-web") from None
    if version != ORT_WEB_VERSION:
        raise ModelError(f"{folder} is onnxruntime-web {version}; the page is built for {ORT_WEB_VERSION} "
                         f"(`npm install onnxruntime-web@{ORT_WEB_VERSION}`)")
    missing = [name for name in ORT_WEB_FILES if not (folder / "dist" / name).is_file()]
    if missing:
        raise ModelError(f"{folder}/dist lacks {', '.join(missing)}: reinstall onnxruntime-web@{ORT_WEB_VERSION}")
    return folder


def export_web(out_dir: str | Path, embedder: str | Path | None = None, runtime: str | Path | None = None) -> dict:
    """Write the page for `embedder` (default: the bundled ONNX model) into `out_dir`; returns
    what the page reads from `model.json`."""
    from ..bundled import weights_dir

    ort_web = find_runtime(runtime)  # before the export: a missing runtime fails at once
    out = Path(out_dir)
    metadata = export_end_to_end(out / MODEL_FILE, embedder, precision="fp16")
    (out / "ort").mkdir(exist_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, out / name)
    for name in ORT_WEB_FILES:
        shutil.copyfile(ort_web / "dist" / name, out / "ort" / name)
    # the npm package ships no licence file; its package.json and file headers declare MIT
    shutil.copyfile(PAGE / ORT_WEB_LICENSE, out / "ort" / ORT_WEB_LICENSE)
    licences = _copy_licences(metadata, weights_dir() / "licenses", out / "licenses")
    page = {
        "faceverify": __version__, "model": MODEL_FILE, "weights_sha256": metadata["weights_sha256"],
        "embedding_dim": metadata["embedding_dim"], "threshold": ModelMetadata.from_dict(metadata).threshold(),
        "face_policy": CENTRAL, "max_pixels": MAX_PIXELS, "onnxruntime_web": ORT_WEB_VERSION,
        "detector": {"name": metadata["detector"]["name"], "licences": metadata["detector"].get("licences", {})},
        "members": [{key: m.get(key) for key in ("name", "arch", "licence", "source")} for m in metadata["members"]],
        "licence_files": [f"ort/{ORT_WEB_LICENSE}", *licences],
    }
    (out / "model.json").write_text(json.dumps(page, indent=2))
    return page


def _copy_licences(metadata: dict, source: Path, target: Path) -> list[str]:
    """The notice and each licence text of the networks in the graph (a member's or the detector's
    name starts its file's name); their paths relative to the page."""
    names = [m["name"].lower() for m in metadata["members"]] + [metadata["detector"]["name"].lower()]
    chosen = [f for f in sorted(source.glob("*"))
              if f.name == "NOTICE.md" or any(f.name.lower().startswith(f"{name}-") for name in names)]
    target.mkdir(exist_ok=True)
    for f in chosen:
        shutil.copyfile(f, target / f.name)
    return [f"licenses/{f.name}" for f in chosen]
