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


def _embedding_actors() -> dict[int, psutil.Process]:
    """The embedding actors of this process's own Ray instance (its raylet is a child of this
    process, the actors are the raylet's children), by pid: never those of another Ray instance on
    the machine (a CLI run, another suite)."""
    actors = {}
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if cmdline and "MapBatches(EmbedFaces)" in cmdline[0]:
            actors[process.pid] = process
    return actors


def test_a_killed_worker_loses_no_photo_and_writes_none_twice(photos, single_machine, cluster, tmp_path):
    """SIGKILL an embedding actor mid-run: Ray restarts it and retries its batch. The actor killed is
    one of this run's (the last run's can still be alive while Ray releases them, busy-looking
    ones: killing one of those tests nothing), once it has used 1.5 s of CPU since it became one
    (past loading its models, about 0.3 s, into its batches, about 0.7 s each; the process can be
    an older worker that Ray reuses, with CPU time of its own)."""
    from faceverify import records

    killed, finished = [], threading.Event()
    stale = set(_embedding_actors())  # the last run's, not yet released: killing them tests nothing
    first_seen: dict[int, float] = {}  # this run's actors: their user CPU when first seen as one

    def kill_one_actor():
        while not killed and not finished.is_set():
            for pid, actor in _embedding_actors().items():
                if pid in stale:
                    continue
                try:
                    cpu = actor.cpu_times().user
                except psutil.Error:
                    continue
                if cpu - first_seen.setdefault(pid, cpu) > 1.5:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            finished.wait(0.05)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    try:
        cluster.embed_on_ray(photos[1], tmp_path / "out", cluster.PipelineSpec.for_model(BUNDLED_ONNX))
    finally:
        finished.set()
        killer.join()
    assert killed, "no embedding actor of this run was found to kill"
    assert_same_rows(records.read_results(tmp_path / "out"), single_machine)


#: `faceverify` with Python's own Ctrl-C handler: a process started with SIGINT ignored (pytest run
#: as a background job, under nohup or by some CI runners) passes that on, and Ctrl-C would never land
CLI_WITH_CTRL_C = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "from faceverify.cli import main; sys.exit(main())")


def _session(sid: int) -> list[psutil.Process]:
    """The live processes of session `sid` (a zombie has stopped: it only waits to be reaped)."""
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getsid(process.pid) == sid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except OSError:  # gone meanwhile
            continue
    return found


def test_an_interrupted_run_resumes_with_only_the_missing_photos(photos, single_machine, tmp_path):
    """Ctrl-C the CLI once the first parts are written; the rerun skips them and leaves them as
    they were. Parts come out in bunches, late: when the run has written every part before the
    signal lands, the newest half of them is taken away, as a kill before their rename would have
    left the folder, so the resume is tested either way.

    The folder is read only once every process of the interrupted run is gone: the CLI is the
    leader of its own session, which its Ray instance (raylet, GCS, workers) shares. On Ctrl-C Ray
    Data cancels its tasks without waiting for them and `ray.shutdown` does not wait for the
    workers, so a write task's worker can outlive the CLI and rename its part into the folder
    after the CLI has exited: after the parts were counted, or during the rerun."""
    from faceverify import records

    out = tmp_path / "out"
    images = [*map(str, photos[1]), "--out", str(out), "--ray", "--ray-cpus", "2"]
    with open(tmp_path / "first.log", "wb") as log:  # a file: a pipe nobody reads can fill and block the CLI
        first = subprocess.Popen([sys.executable, "-c", CLI_WITH_CTRL_C, "embed", *images], env=ENV, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    deadline = time.monotonic() + 60
    while (left := _session(first.pid)) and time.monotonic() < deadline:
        psutil.wait_procs(left, timeout=1)
    assert not left, f"the interrupted run's processes outlived it: {[p.name() for p in left]}"
    stderr = (tmp_path / "first.log").read_text(errors="replace")[-2000:]
    assert not list(out.glob(".part-*")) or first.returncode != 0  # no half-written part left by a finished run
    if records.read_results(out).num_rows == len(photos[1]):
        parts = sorted(out.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
        for part in parts[len(parts) // 2:]:
            part.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    done = records.read_results(out).num_rows
    assert kept and 0 < done < len(photos[1]), f"no part, or every part, was written\n{stderr}"

    again = subprocess.run([sys.executable, "-m", "faceverify.cli", "embed", *images], env=ENV, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
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
