"""One row per photo of a bulk run: the columns `faceverify embed --out X.parquet` writes on one
machine and the Ray path (`cluster`) writes on many, so the two outputs compare row for row.

`status` is "ok" or the typed error's class name (`NoFaceError`, `InvalidImageError`, ...) with its
message in `error`; a failed photo has null box, landmarks and embedding. `quality_score` is the
face's score by the model's quality model, `reliable` whether it clears the floor, and `problems`
why not (`quality.py`). Enrolment rows add what a
gallery stores per photo (`ENROLMENT_FIELDS`). Parquet needs pyarrow (the `ray` extra brings it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FaceVerifyError

OK = "ok"
#: what an enrolment row adds: the identity, the decoded pixels' digest, the gate's measures and the
#: thumbnail a gallery keeps
ENROLMENT_FIELDS = ("identity", "sha256", "det_score", "face_size", "sharpness", "thumbnail", "quality_problems")


def result_row(path: str, result, model_sha256: str) -> dict:
    """The row of one photo: its `FaceEmbedding`, or the `FaceVerifyError` that stopped it."""
    if isinstance(result, FaceVerifyError):
        return {"path": str(path), "status": type(result).__name__, "error": str(result), "box": None,
                "score": None, "landmarks": None, "faces_found": None, "whole_image": None, "quality_score": None,
                "reliable": None, "problems": None, "embedding": None, "model_sha256": model_sha256}
    face, quality = result.face, result.quality
    return {"path": str(path), "status": OK, "error": None,
            "box": np.asarray(face.box, np.float32).tolist(), "score": float(face.score),
            "landmarks": np.asarray(face.landmarks, np.float32).reshape(-1).tolist(),
            "faces_found": int(result.faces_found), "whole_image": bool(face.whole_image),
            "quality_score": quality.score, "reliable": quality.reliable, "problems": list(quality.problems),
            "embedding": np.asarray(result.embedding, np.float32).tolist(), "model_sha256": model_sha256}


def schema(enrolment: bool = False):
    import pyarrow as pa

    columns = [("path", pa.string()), ("status", pa.string()), ("error", pa.string()),
               ("box", pa.list_(pa.float32(), 4)), ("score", pa.float32()),
               ("landmarks", pa.list_(pa.float32(), 10)), ("faces_found", pa.int32()),
               ("whole_image", pa.bool_()), ("quality_score", pa.float32()), ("reliable", pa.bool_()),
               ("problems", pa.list_(pa.string())),
               ("embedding", pa.list_(pa.float32())), ("model_sha256", pa.string())]
    if enrolment:
        columns += [("identity", pa.string()), ("sha256", pa.string()), ("det_score", pa.float32()),
                    ("face_size", pa.float32()), ("sharpness", pa.float32()), ("thumbnail", pa.binary()),
                    ("quality_problems", pa.list_(pa.string()))]
    return pa.schema(columns)


def table(rows: Sequence[dict], enrolment: bool = False):
    """The rows as a pyarrow Table of the fixed schema (empty rows → an empty table, same columns)."""
    import pyarrow as pa

    fields = schema(enrolment)
    return pa.Table.from_pylist([{name: row.get(name) for name in fields.names} for row in rows], schema=fields)


def write_parquet(rows: Sequence[dict], path: str | Path) -> None:
    """Write `rows` to one Parquet file, atomically: a crash leaves the old file or none, never half
    of one."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FaceVerifyError("Parquet output needs pyarrow: pip install pyarrow "
                              "(or 'faceverify[ray]'), or write .npz") from None

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table(rows), partial)
    os.replace(partial, path)


def read_results(path: str | Path, columns: Sequence[str] | None = None):
    """A Parquet file, or a folder of part files (the Ray path's output), as one Table (of
    `columns` only, if given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        full = table([])
        return full.select(list(columns)) if columns else full
    return pa.concat_tables([pq.read_table(f, columns=columns, schema=schema()) for f in files])
