"""Timing helpers shared by the benchmarks: warm up, repeat, report the median."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting threads distort 2-core timings

ROOT = Path(__file__).resolve().parents[1]
LFW = (ROOT / ".." / "shared" / "data" / "lfw" / "images").resolve()


def lfw_photos(n: int) -> list[Path]:
    return sorted(LFW.glob("*/*.jpg"))[::37][:n]


def median_seconds(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
