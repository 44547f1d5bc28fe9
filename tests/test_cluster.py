"""The Ray path (`faceverify.cluster`) on a real local Ray instance and real photos: the same rows as
one machine, no photo lost or written twice when a worker is killed, resumed runs do only the rest,
enrolment into a real SQLite gallery."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import BUNDLED_ONNX, ROOT, celeba_subset

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow
ENV = {**os.environ, "FACEVERIFY_MODEL": str(BUNDLED_ONNX)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A manifest of 240 real CelebA photos (30 people × 8), plus two files that are not images."""
    folder = tmp_path_factory.mktemp("cluster")
    manifest = celeba_subset(folder, 30, 8)
    from faceverify.data import load_samples

    paths = [s.path for s in load_samples(manifest)]
    (folder / "not-a-photo.jpg").write_bytes(b"this is text")
    (folder / "empty.png").write_bytes(b"")
    return manifest, paths + [folder / "not-a-photo.jpg", folder / "empty.png"]


@pytest.fixture(scope="module")
def single_machine(photos, tmp_path_factory):
    """`faceverify embed --out X.parquet` on one machine: the reference rows."""
    from faceverify import records

    out = tmp_path_factory.mktemp("one") / "one.parquet"
    subprocess.run([sys.executable, "-m", "faceverify.cli", "embed", *map(str, photos[1]), "--out", str(out)],
                   env=ENV, check=True, capture_output=True, cwd=ROOT)
    return records.read_results(out)


@pytest.fixture(scope="module")
def cluster():
    from faceverify import cluster

    cluster.connect(cpus=2)
    yield cluster
    ray.shutdown()


def assert_same_rows(found, expected):
    """Row for row: one per photo, same statuses and errors, embeddings within 1e-5."""
    paths = found["path"].to_pylist()
    assert len(paths) == len(set(paths)), "a photo was written twice"
    found, expected = found.sort_by("path"), expected.sort_by("path")
    assert found["path"].to_pylist() == expected["path"].to_pylist()
    assert found["status"].to_pylist() == expected["status"].to_pylist()
    assert found["error"].to_pylist() == expected["error"].to_pylist()
    ok = [s == "ok" for s in expected["status"].to_pylist()]
    a = np.array([e for e, k in zip(found["embedding"].to_pylist(), ok) if k], np.float32)
    b = np.array([e for e, k in zip(expected["embedding"].to_pylist(), ok) if k], np.float32)
    assert len(a) >= 200 and np.abs(a - b).max() <= 1e-5
    boxes = [np.array(x, np.float32) for x, k in zip(found["box"].to_pylist(), ok) if k]
    ref = [np.array(x, np.float32) for x, k in zip(expected["box"].to_pylist(), ok) if k]
    assert np.abs(np.stack(boxes) - np.stack(ref)).max() <= 1e-3
    assert set(found["model_sha256"].to_pylist()) == set(expected["model_sha256"].to_pylist())


def test_cluster_rows_equal_the_single_machine_path(photos, single_machine, cluster, tmp_path):
    from faceverify import records

    spec = cluster.PipelineSpec.for_model(BUNDLED_ONNX)
    summary = cluster.embed_on_ray(photos[1], tmp_path / "out", spec)
    assert (summary.written, summary.skipped) == (len(photos[1]), 0)
    found = records.read_results(tmp_path / "out")
    assert_same_rows(found, single_machine)
    statuses = dict(zip(found["path"].to_pylist(), found["status"].to_pylist()))
    assert statuses[str(photos[1][-1])] == statuses[str(photos[1][-2])] == "InvalidImageError"
    assert summary.failed == sum(s != "ok" for s in statuses.values())


def _busy_embed_actor() -> int | None:
    """The pid of an embedding actor that has been working for a while (past loading its models:
    2.5 s of CPU), or None."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"]
        if cmdline and "MapBatches(EmbedFaces)" in cmdline[0]:
            try:
                if process.cpu_times().user > 2.5:
                    return process.pid
            except psutil.NoSuchProcess:
                continue
    return None


def test_a_killed_worker_loses_no_photo_and_writes_none_twice(photos, single_machine, cluster, tmp_path):
    """SIGKILL an embedding actor mid-run: Ray restarts it and retries its batch."""
    from faceverify import records

    killed, finished = [], threading.Event()

    def kill_one_actor():
        while not killed and not finished.is_set():
            pid = _busy_embed_actor()
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    try:
        cluster.embed_on_ray(photos[1], tmp_path / "out", cluster.PipelineSpec.for_model(BUNDLED_ONNX))
    finally:
        finished.set()
        killer.join()
    assert killed, "no embedding actor was found to kill"
    assert_same_rows(records.read_results(tmp_path / "out"), single_machine)


def test_an_interrupted_run_resumes_with_only_the_missing_photos(photos, single_machine, tmp_path):
    """Ctrl-C the CLI once the first parts are written; the rerun skips them and leaves them as
    they were. Parts come out in bunches, late: when the run has written every part before the
    signal lands, the newest half of them is taken away, as a kill before their rename would have
    left the folder, so the resume is tested either way."""
    from faceverify import records

    out = tmp_path / "out"
    command = [sys.executable, "-m", "faceverify.cli", "embed", *map(str, photos[1]), "--out", str(out),
               "--ray", "--ray-cpus", "2"]
    first = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not list(out.glob("part-*.parquet")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    first.wait(timeout=120)
    assert not list(out.glob(".part-*")) or first.returncode != 0  # no half-written part left by a finished run
    if records.read_results(out).num_rows == len(photos[1]):
        parts = sorted(out.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
        for part in parts[len(parts) // 2:]:
            part.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    done = records.read_results(out).num_rows
    assert kept and 0 < done < len(photos[1]), "no part, or every part, was written"

    again = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(photos[1]) - done} images processed ({done} already in" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == kept
    assert_same_rows(records.read_results(out), single_machine)


def test_enrolment_on_the_cluster_matches_one_machine_and_resumes(photos, cluster, tmp_path):
    from faceverify import Verifier
    from faceverify.gallery import Gallery

    manifest = photos[0]
    verifier = Verifier(BUNDLED_ONNX)
    with Gallery(tmp_path / "one.db", verifier) as one:
        expected = {r.name: (sorted(r.added), sorted(r.rejected)) for r in one.enroll_dataset(manifest, progress=False)}
        one_images = sorted((i["source"], i["sha256"]) for name, *_ in one.identities() for i in one.show(name))
    spec = cluster.PipelineSpec.for_model(BUNDLED_ONNX)
    with Gallery(tmp_path / "ray.db", verifier) as gallery:
        reports = cluster.enroll_on_ray(gallery, manifest, spec, progress=False)
        assert {r.name: (sorted(r.added), sorted(r.rejected)) for r in reports} == expected
        images = sorted((i["source"], i["sha256"]) for name, *_ in gallery.identities() for i in gallery.show(name))
        assert images == one_images and len(images) >= 120  # the rest fail the quality gate
        by_source = _embeddings_by_source(gallery)
        again = cluster.enroll_on_ray(gallery, manifest, spec, progress=False)
        assert all(not r.added for r in again) and gallery.store.image_count() == len(images)
        assert {r.name for r in again} == {name for name, (_, rejected) in expected.items() if rejected}
    with Gallery(tmp_path / "one.db", verifier) as one:
        reference = _embeddings_by_source(one)
    assert max(np.abs(by_source[s] - reference[s]).max() for s in reference) <= 1e-5


def _embeddings_by_source(gallery) -> dict:
    rows, embeddings = gallery.store.all_images()
    return {row[1]: e for row, e in zip(rows, embeddings)}
