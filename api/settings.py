"""What an API server is told at start (`faceverify api` options), in one place."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_workers() -> int:
    """Twice the cores, at most 8: one request's decoding and Python overlap another's onnxruntime
    calls (bench/bench_api.py on 2 cores: 4 workers keep 0.93 of in-process throughput, 2 keep 0.86)."""
    return min(8, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class ApiSettings:
    gallery: str  # SQLite file or postgresql:// URL
    photos: Path | None = None  # where enrolled photos are kept (default: beside the gallery)
    workers: int = field(default_factory=default_workers)  # inference threads
    queue: int = 32  # requests that may wait for a worker; beyond that: 503
    rate: float = 20.0  # requests a second a key may make, on average ...
    burst: int = 40  # ... and at once; beyond that: 429
    max_body_bytes: int = 25 * 2 ** 20  # 413 beyond this, before the body is read whole
    max_photos: int = 20  # photos a request may carry
    read_timeout_s: float = 30.0  # a client sending its body slower than this between chunks: 408
    request_timeout_s: float = 120.0  # inference taking longer: 504
    busy_timeout_s: float = 10.0  # waiting for another writer of the gallery: then 503
