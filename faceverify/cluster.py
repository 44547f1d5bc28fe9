"""Bulk embedding and enrolment on a Ray cluster (`pip install faceverify[ray]`; imported only when
used): one machine's torch-free pipeline, spread over Ray Data.

    list photos (driver) → decode + detect + align (CPU tasks) → embed (actor pool, one ONNX
    session per actor, on a GPU where the node has one) → Parquet part files, or a gallery

Rows are `records` rows, the same as `faceverify embed --out X.parquet` on one machine. A bad photo
is a row with its typed error, never a failed job. Workers that die are retried by Ray (tasks and
actors); each block of results is written under a name derived from the photos it holds, through a
temporary file renamed into place, so a retried write replaces its own file: no photo is lost or
written twice. A rerun lists what the output (or the gallery) already holds and does only the rest.
Every node needs faceverify installed and must read the photos and write the output folder at the
same (absolute) paths as the driver: a shared filesystem on a cluster of several machines. A model
given by path must be readable there too (the bundled model is each node's own copy, checked
against the driver's by hash).
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import ray

from . import records
from .data import image_paths, load_samples
from .detect import DETECTION_MAX_SIDE
from .errors import FaceVerifyError, ModelError, ModelMismatchError, error_from_name
from .metadata import describe_fingerprint, fingerprint
from .policies import LEGACY_DETECTOR

#: photos per Ray batch (the detector's batch on one machine)
BATCH = 32


@dataclass(frozen=True)
class PipelineSpec:
    """What a worker needs to rebuild the driver's pipeline: names and numbers, no sessions."""

    model: str | None  # None: the bundled model of the worker's own install
    model_sha256: str
    detector: str = LEGACY_DETECTOR  # a `detect.registry` name
    face_policy: str = "single"
    flip: bool | None = None
    min_face_fraction: float = 0.0
    max_detection_side: int = DETECTION_MAX_SIDE
    quality_floor: float | None = None
    assume_cropped: bool = False

    @classmethod
    def for_model(cls, model: str | Path | None = None, model_sha256: str | None = None,
                  detector: str | None = None, **options) -> "PipelineSpec":
        """The spec for an ONNX model (default: the bundled one), its hash and detector (default:
        the one it names) read on the driver unless the caller has them (a verifier already loaded)."""
        from .runtime import OnnxEmbedder
        from .verifier import default_model_path

        path = Path(model) if model is not None else default_model_path()
        if path.suffix != ".onnx":
            raise ModelError(f"{path}: the cluster path runs ONNX models; export it first "
                             "(`faceverify export`)")
        if model_sha256 is None or detector is None:
            metadata = OnnxEmbedder(path, threads=1).metadata
            model_sha256, detector = model_sha256 or metadata.weights_sha256, detector or metadata.detector_name
        return cls(str(path.absolute()) if model is not None else None, model_sha256, detector, **options)

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the parts' rows record (`metadata.fingerprint`): the model's weights and the detector."""
        from .detect.registry import weights_sha256

        return fingerprint(self.model_sha256, self.detector, weights_sha256(self.detector))


@functools.lru_cache(maxsize=2)
def worker_verifier(spec: PipelineSpec):
    """This worker process's verifier (built once, reused by every batch it is given): one
    onnxruntime thread per network, the worker owning its share of a core."""
    from .detect.registry import create_detector
    from .runtime import OnnxEmbedder
    from .verifier import Verifier, default_model_path

    embedder = OnnxEmbedder(spec.model or default_model_path(), threads=1)
    if embedder.metadata.weights_sha256 != spec.model_sha256:
        raise ModelMismatchError(f"this node's model {embedder.metadata.weights_sha256[:12]} is not the "
                                 f"driver's {spec.model_sha256[:12]}: install the same faceverify everywhere")
    detector = create_detector(spec.detector, providers=["CPUExecutionProvider"],
                               min_face_fraction=spec.min_face_fraction, max_side=spec.max_detection_side,
                               workers=1, threads=1)
    return Verifier(embedder=embedder, detector=detector, face_policy=spec.face_policy, flip=spec.flip,
                    quality_floor=spec.quality_floor, assume_cropped=spec.assume_cropped)


def detect_batch(batch: dict, spec: PipelineSpec, digests: bool) -> dict:
    """The CPU stage: decode, detect, select and align one batch of photos. Failed photos keep
    their typed error (class name and message) and zero crops; `digests` adds each decoded photo's
    `image_digest` (for a gallery's duplicate check)."""
    from .detect import AlignedFace, detect_and_align
    from .gallery.photos import image_digest
    from .pipeline import decode_ahead

    verifier = worker_verifier(spec)
    paths = [str(p) for p in batch["path"]]
    decoded = list(decode_ahead(paths, workers=1))
    ok = [i for i, image in enumerate(decoded) if isinstance(image, np.ndarray)]
    results: list = list(decoded)
    for i, found in zip(ok, detect_and_align([decoded[i] for i in ok], verifier.detector, spec.face_policy,
                                             [paths[i] for i in ok], verifier.templates)):
        results[i] = found
    faces = [r if isinstance(r, AlignedFace) else None for r in results]
    out = {**batch,
           "status": np.array([records.OK if f else type(r).__name__ for f, r in zip(faces, results)]),
           "error": np.array(["" if f else str(r) for f, r in zip(faces, results)]),
           "box": np.array([f.face.box if f else np.full(4, np.nan) for f in faces], np.float32).reshape(-1, 4),
           "score": np.array([f.face.score if f else np.nan for f in faces], np.float32),
           "landmarks": np.array([f.face.landmarks if f else np.full((5, 2), np.nan) for f in faces],
                                 np.float32).reshape(-1, 5, 2),
           "faces_found": np.array([f.faces_found if f else 0 for f in faces], np.int32),
           "whole_image": np.array([bool(f and f.face.whole_image) for f in faces])}
    for t, template in enumerate(verifier.templates):
        blank = np.zeros((template.size, template.size, 3), np.uint8)
        out[f"crop{t}"] = np.stack([f.crops[t] if f else blank for f in faces]) if faces else \
            np.zeros((0, *blank.shape), np.uint8)
    if digests:
        out["sha256"] = np.array([image_digest(d) if isinstance(d, np.ndarray) else "" for d in decoded])
    return out


class EmbedFaces:
    """The actor stage: one verifier (ONNX session) per actor embeds the aligned crops and turns
    each photo into its `records` row (plus, for enrolment, what a gallery stores of it)."""

    def __init__(self, spec: PipelineSpec, enrolment: bool):
        self.spec, self.enrolment = spec, enrolment
        self.verifier = worker_verifier(spec)

    def __call__(self, batch: dict):
        from .detect import AlignedFace, Face
        from .gallery.photos import enrolment_photo

        ok = np.flatnonzero(batch["status"] == records.OK)
        faces = [AlignedFace(Face(batch["box"][i], float(batch["score"][i]), batch["landmarks"][i],
                                  bool(batch["whole_image"][i])),
                             tuple(batch[f"crop{t}"][i] for t in range(len(self.verifier.templates))),
                             int(batch["faces_found"][i])) for i in ok]
        results: list = [error_from_name(s, e) for s, e in zip(batch["status"], batch["error"])]
        for i, face in zip(ok, self.verifier.embed_faces(faces)):
            results[i] = face
        rows = [records.result_row(p, r, self.spec.fingerprint) for p, r in zip(batch["path"], results)]
        if self.enrolment:
            for row, result, digest, identity in zip(rows, results, batch["sha256"], batch["identity"]):
                photo = enrolment_photo(row["path"], str(digest) or None, result)
                row.update({k: v for k, v in photo.items() if k in records.ENROLMENT_FIELDS}, identity=str(identity))
        return records.table(rows, self.enrolment)


class PartFiles(ray.data.Datasink):
    """Each block of rows as one Parquet file named after its photos, written to a temporary file
    and renamed into place: a retried write replaces its own file, a killed one leaves no part."""

    def __init__(self, folder: Path):
        self.folder = folder

    def write(self, blocks, ctx) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b, preserve_index=False) for b in blocks]
        if not tables:
            return 0
        block = pa.concat_tables(tables)
        name = hashlib.sha1("\n".join(block["path"].to_pylist()).encode()).hexdigest()[:20]
        partial = self.folder / f".part-{name}.{os.getpid()}.partial"
        pq.write_table(block, partial)
        os.replace(partial, self.folder / f"part-{name}.parquet")
        return block.num_rows


def connect(address: str | None = None, cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` ("auto": the one `ray start` runs here), or start a local
    instance of `cpus` CPUs (default: all); nothing if this process is already connected."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def _pipeline(rows: list[dict], spec: PipelineSpec, enrolment: bool):
    """The Ray Data plan for `rows` (dicts with "path", and "identity" for enrolment). On CPU
    nodes Ray fuses the two stages into each actor (no crops cross processes): one actor per CPU.
    Where the cluster has GPUs, each embedding actor takes one."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    return (ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // BATCH)))
            .map_batches(detect_batch, fn_kwargs={"spec": spec, "digests": enrolment}, batch_size=BATCH,
                         batch_format="numpy", num_cpus=1)
            # Ray Data restarts a dead actor and retries its tasks (max_restarts and
            # max_task_retries default to -1 for actor pools)
            .map_batches(EmbedFaces, fn_constructor_kwargs={"spec": spec, "enrolment": enrolment},
                         batch_size=BATCH, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=gpus or cpus,
                                                            initial_size=gpus or cpus),
                         **({"num_gpus": 1} if gpus else {"num_cpus": 1})))


@dataclass
class RunSummary:
    written: int  # photos processed by this run
    skipped: int  # photos an earlier run had already written
    failed: int  # photos of the whole output folder with an error row (no face, unreadable, ...)


def embed_on_ray(images: Sequence[str | Path], out: str | Path, spec: PipelineSpec) -> RunSummary:
    """Embed every photo of `images` (files, or folders searched recursively) into the Parquet
    folder `out`, on the connected cluster (`connect`); photos already in `out` are skipped."""
    import pyarrow.compute as pc

    out = Path(out).absolute()  # every worker writes there: give them all the same path
    if out.exists() and not out.is_dir():
        raise FaceVerifyError(f"{out}: the cluster writes a folder of Parquet parts, not a file")
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".part-*.partial"):  # writes killed before their rename
        leftover.unlink()
    paths = [str(p.absolute()) for p in image_paths(list(images))]
    if not paths:
        raise FaceVerifyError("no images found in the folders given")
    written = records.read_results(out, ["path", "model_sha256"])
    foreign = set(written["model_sha256"].to_pylist()) - {spec.fingerprint}
    if foreign:
        raise ModelMismatchError(f"{out} holds rows of model {describe_fingerprint(sorted(foreign)[0])}, not "
                                 f"{describe_fingerprint(spec.fingerprint)}: write to another folder")
    done = set(written["path"].to_pylist())
    todo = [{"path": p} for p in paths if p not in done]
    if todo:
        _pipeline(todo, spec, enrolment=False).write_datasink(PartFiles(out))
    statuses = records.read_results(out, ["status"])["status"]
    failed = int(pc.sum(pc.not_equal(statuses, records.OK)).as_py() or 0)
    return RunSummary(len(todo), len(paths) - len(todo), failed)


def enroll_on_ray(gallery, dataset: str | Path, spec: PipelineSpec, progress: bool = True) -> list:
    """`Gallery.enroll_dataset` with the photos analysed on the cluster: results stream back to
    this process, and each person is committed in one transaction (`Gallery.add_photos`) as soon as
    all their photos are in. Photos the gallery already holds (by source) are skipped, so a rerun
    after an interruption does only the rest. Returns the `EnrollReport` of each person enrolled."""
    from tqdm import tqdm

    verifier = gallery.verifier
    if spec.fingerprint != verifier.fingerprint:
        raise ModelMismatchError("the cluster's model or detector is not the gallery's")
    if spec.face_policy != verifier.face_policy or (spec.flip if spec.flip is not None else
                                                     verifier.metadata.flip) != verifier.flip:
        raise ValueError("the cluster's face policy and flip must be the gallery verifier's")
    done = gallery.store.sources()
    todo = [{"path": str(s.path.absolute()), "identity": s.identity} for s in load_samples(dataset)
            if str(s.path.absolute()) not in done]
    expected = defaultdict(int)
    for row in todo:
        expected[row["identity"]] += 1
    order = {row["path"]: i for i, row in enumerate(todo)}
    pending, reports = defaultdict(list), []
    if not todo:
        return reports
    with tqdm(total=len(todo), desc="enroll", unit="image", disable=not progress) as bar:
        for batch in _pipeline(todo, spec, enrolment=True).iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                person = pending[row["identity"]]
                person.append(row)
                bar.update()
                if len(person) == expected[row["identity"]]:
                    person.sort(key=lambda r: order[r["path"]])
                    reports.append(gallery.add_photos(row["identity"], [_photo(r) for r in pending.pop(row["identity"])]))
    return reports


def _photo(row: dict) -> dict:
    """A gallery's per-photo record (`gallery.enrolment_photo`) from an enrolment row."""
    photo = {"source": row["path"], "sha256": row["sha256"] or None,
             "error": row["error"] if row["status"] != records.OK else None}
    if photo["error"] is None:
        photo.update(embedding=np.asarray(row["embedding"], np.float32), thumbnail=row["thumbnail"],
                     det_score=row["det_score"], face_size=row["face_size"], sharpness=row["sharpness"],
                     quality=row["quality_score"], quality_problems=row["quality_problems"])
    return photo
