"""Bulk embedding on Ray (`faceverify embed --ray`), side by side in one run on the same folder of
real photos: a local Ray instance of 1 CPU, then of 2, beside the single-machine pipeline
(`faceverify embed`), all on the bundled ONNX model. Each Ray run starts from an empty output
folder; its figure counts the job (plan, tasks, actors, Parquet writes), not Ray's start-up,
which is reported apart. The per-core figure is what the README's sizing table scales.

    python bench/bench_cluster.py [--photos 800]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
from common import LFW, ROOT, table

from faceverify import cluster
from faceverify.verifier import Verifier

MODEL = ROOT / "weights" / "faceverify-default.onnx"


def ray_run(photos: list[Path], cpus: int) -> tuple[float, float]:
    """(photos/s of the job, seconds to start the local instance) on `cpus` CPUs."""
    start = time.perf_counter()
    cluster.connect(cpus=cpus)
    started = time.perf_counter() - start
    try:
        spec = cluster.PipelineSpec.for_model(MODEL, face_policy="largest")
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            summary = cluster.embed_on_ray(photos, out, spec)
            seconds = time.perf_counter() - start
        assert summary.written == len(photos)
        return len(photos) / seconds, started
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=800)
    args = parser.parse_args()
    photos = sorted(LFW.glob("*/*.jpg"))[::7][:args.photos]
    verifier = Verifier(MODEL, face_policy="largest")
    list(verifier.analyze_stream(photos[:16]))  # warm-up
    start = time.perf_counter()
    list(verifier.analyze_stream(photos))
    single = len(photos) / (time.perf_counter() - start)
    one, started_one = ray_run(photos, 1)
    two, started_two = ray_run(photos, 2)
    table(f"{len(photos)} LFW photos, bundled ONNX model, photos/s (this machine: 2 cores)",
          ["pipeline", "photos/s", "vs Ray 1 CPU", "Ray start-up s"],
          [["`faceverify embed` (one process, threads)", single, single / one, "-"],
           ["Ray, 1 CPU", one, 1.0, started_one],
           ["Ray, 2 CPUs", two, two / one, started_two]])


if __name__ == "__main__":
    main()
