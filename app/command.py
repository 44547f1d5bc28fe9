"""`faceverify serve`: registered through the `faceverify.commands` entry point, imports Gradio only
when it runs, so every other verb (and `--help`) starts without it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from faceverify.access import check_exposure
from faceverify.errors import FaceVerifyError
from faceverify.gallery import DEFAULT_GALLERY


def add_serve_command(sub, model_args) -> None:
    parser = sub.add_parser("serve", help="the web UI (Gradio), on 127.0.0.1 unless told otherwise")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--gallery", default=DEFAULT_GALLERY, help="SQLite gallery file, or a postgresql:// URL")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio link (needs a login)")
    parser.add_argument("--auth-file", type=Path, help="users who may log in (`faceverify users add`); "
                        "needed for any host but the loopback, and for --share")
    parser.add_argument("--insecure", action="store_true", help="serve beyond the loopback without a login "
                        "(only behind something else that checks who connects)")
    model_args(parser)
    parser.set_defaults(func=serve)


def serve(args) -> int:
    check_exposure(args.host, args.share, login=args.auth_file is not None, insecure=args.insecure)
    if importlib.util.find_spec("gradio") is None:
        raise FaceVerifyError("the web UI needs Gradio: pip install 'faceverify[app]'")
    from .main import launch

    launch(args.model, args.gallery, args.host, args.port, args.share, args.flip, args.detector,
           args.auth_file, args.insecure)
    return 0
