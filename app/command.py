"""`faceverify serve`: registered through the `faceverify.commands` entry point, imports Gradio only
when it runs, so every other verb (and `--help`) starts without it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from faceverify.errors import FaceVerifyError

DEFAULT_GALLERY = Path("gallery.db")


def add_serve_command(sub, model_args) -> None:
    parser = sub.add_parser("serve", help="the web UI (Gradio), on 127.0.0.1 unless told otherwise")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--gallery", type=Path, default=DEFAULT_GALLERY)
    parser.add_argument("--share", action="store_true", help="also open a public Gradio link")
    model_args(parser)
    parser.set_defaults(func=serve)


def serve(args) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise FaceVerifyError("the web UI needs Gradio: pip install 'faceverify[app]'")
    from .main import launch

    launch(args.model, args.gallery, args.host, args.port, args.share, args.flip, args.detector)
    return 0
