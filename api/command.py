"""`faceverify api`: registered through the `faceverify.commands` entry point; imports FastAPI only
when it runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from faceverify.errors import FaceVerifyError
from faceverify.gallery import DEFAULT_GALLERY

from .settings import ApiSettings

DEFAULTS = ApiSettings(gallery=DEFAULT_GALLERY)


def add_api_command(sub, model_args) -> None:
    p = sub.add_parser("api", help="the REST API (FastAPI): API keys with scopes, rate limits, audit trail")
    p.add_argument("--gallery", default=DEFAULT_GALLERY, help="SQLite gallery file, or a postgresql:// URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=DEFAULTS.workers,
                   help=f"inference threads (default: twice the cores, at most 8: {DEFAULTS.workers} here)")
    p.add_argument("--queue", type=int, default=DEFAULTS.queue,
                   help="requests that may wait for a worker; beyond that 503 with Retry-After")
    p.add_argument("--rate", type=float, default=DEFAULTS.rate, help="requests a second per key (429 beyond)")
    p.add_argument("--burst", type=int, default=DEFAULTS.burst, help="requests a key may make at once")
    p.add_argument("--max-body-mb", type=float, default=DEFAULTS.max_body_bytes / 2 ** 20,
                   help="larger request bodies get 413 before they are read")
    p.add_argument("--timeout", type=float, default=DEFAULTS.request_timeout_s,
                   help="seconds a request's inference may take (504 beyond)")
    p.add_argument("--read-timeout", type=float, default=DEFAULTS.read_timeout_s,
                   help="seconds a client may pause while sending its body (408 beyond)")
    p.add_argument("--photos", type=Path, help="folder for enrolled photos (default: GALLERY.photos beside a "
                   "SQLite gallery, ./faceverify-photos for PostgreSQL)")
    p.add_argument("--busy-timeout", type=float, default=DEFAULTS.busy_timeout_s)
    model_args(p)
    p.set_defaults(func=run_api)


def run_api(args) -> int:
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise FaceVerifyError("the API needs FastAPI and uvicorn: pip install 'faceverify[api]'")
    if min(args.workers, args.rate, args.burst, args.max_body_mb, args.timeout, args.read_timeout) <= 0 or args.queue < 0:
        raise FaceVerifyError("--workers, --rate, --burst, --max-body-mb and the timeouts must be positive, "
                              "--queue at least 0")
    from faceverify import Verifier

    from .main import serve

    settings = ApiSettings(gallery=args.gallery, photos=args.photos, workers=args.workers, queue=args.queue,
                           rate=args.rate, burst=args.burst, max_body_bytes=int(args.max_body_mb * 2 ** 20),
                           request_timeout_s=args.timeout, read_timeout_s=args.read_timeout,
                           busy_timeout_s=args.busy_timeout)
    verifier = Verifier(args.model, detector=args.detector, device=args.device, flip=args.flip,
                        min_face_fraction=args.min_face_fraction, max_detection_side=args.max_detection_side,
                        quality_floor=args.quality_floor, assume_cropped=args.assume_cropped)
    serve(verifier, settings, args.host, args.port)
    return 0
