"""Distillation teachers: other face models whose embeddings become training targets.

A teacher embeds a face *from the original photo* with its own alignment (never the student's
crop, which is framed for the student), located by the box and landmarks `prepare` recorded, so that
teacher and student see the same face. `embed_prepared` runs a teacher over a prepared dataset and
stores the vectors beside its crops, keyed by crop path, in atomically written parts: a killed run
loses at most one part and a rerun continues. Teacher packages (dlib, ncnn) are an optional extra,
`faceverify[distill]`, imported only when a teacher is built.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tqdm import tqdm

from ..align import align_face
from ..data import load_samples
from ..detect import Face
from ..detect.aligned import align_templates
from ..errors import FaceVerifyError
from ..images import load_rgb
from ..prepare import face_from_manifest

TEACHERS_DIR = "teachers"  # inside a prepared dataset: teachers/<name>/part-*.npz


class Teacher(Protocol):
    name: str
    dim: int
    licence: str  # what the teacher's weights allow; recorded in the student's metadata

    def embed(self, photo: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """(len(faces), dim) L2-normalised embeddings of `faces` in one RGB uint8 `photo`."""


def embed_faces(teacher: Teacher, photos: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
    """(N, dim) embeddings of one face per photo: in one batch where the teacher takes batches
    (`embed_batch`), else photo by photo."""
    if hasattr(teacher, "embed_batch"):
        return teacher.embed_batch(photos, faces)
    return np.stack([teacher.embed(photo, [face])[0] for photo, face in zip(photos, faces)])


class ModelTeacher:
    """A faceverify model file as teacher, by default the bundled ensemble (SFace, Apache-2.0 +
    dlib's ResNet, public domain: a student of it may be redistributed). Each face is aligned to
    every template the model names, from the recorded landmarks, and embedded in batches on the
    model's fastest path (the ONNX file). `FACEVERIFY_TEACHER_MODEL` picks another model file."""

    name = "ensemble"
    ENV = "FACEVERIFY_TEACHER_MODEL"
    #: the bundled model's; an instance says its own model's (`ModelMetadata.description`)
    licence = "its members': the bundled ensemble is SFace (Apache-2.0) + dlib's ResNet (public domain)"

    def __init__(self, model: str | Path | None = None):
        from ..verifier import default_model_path, load_embedder

        self._embedder = load_embedder(model or os.environ.get(self.ENV) or default_model_path())
        metadata = self._embedder.metadata
        self.dim, self.licence = metadata.embedding_dim, metadata.description
        self.weights_sha256 = metadata.weights_sha256
        self._templates = metadata.templates

    def embed(self, photo: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        return self.embed_batch([photo] * len(faces), faces)

    def embed_batch(self, photos: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        aligned = [align_templates(photo, face, self._templates) for photo, face in zip(photos, faces)]
        return self._embedder(*(np.stack(crops) for crops in zip(*aligned)))


class DlibTeacher:
    """dlib's ResNet face model (`dlib_face_recognition_resnet_model_v1`, 128-d, public domain)
    on chips aligned by its 5-point predictor (public domain; the 68-point one is not, so it is
    never used). Model files come from the `face_recognition_models` package."""

    name, dim = "dlib", 128
    licence = "public domain (dlib_face_recognition_resnet_model_v1, shape_predictor_5_face_landmarks)"

    def __init__(self):
        try:
            import dlib
        except ImportError as exc:
            raise FaceVerifyError(f"the dlib teacher needs `pip install 'faceverify[distill]'` ({exc})") from None
        files = dlib_models_dir()
        self._dlib = dlib
        self._landmarks = dlib.shape_predictor(str(files / "shape_predictor_5_face_landmarks.dat"))
        self._model = dlib.face_recognition_model_v1(str(files / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, photo: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        shapes = self._dlib.full_object_detections()
        for face in faces:
            shapes.append(self._landmarks(photo, dlib_rectangle(face, self._dlib)))
        vectors = np.asarray(self._model.compute_face_descriptor(photo, shapes), np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def dlib_models_dir() -> Path:
    """The folder of dlib's model files in the `face_recognition_models` package. Its own __init__
    needs pkg_resources, gone from current setuptools, so the files are found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise FaceVerifyError("the dlib teacher needs `pip install 'faceverify[distill]'` "
                              "(no face_recognition_models)")
    return Path(spec.submodule_search_locations[0]) / "models"


def dlib_rectangle(face: Face, dlib):
    """dlib's detectors frame a face as a square from the brows to the chin, tighter than MTCNN's
    box (which reaches the hairline): a square on the MTCNN box's lower part gives the 5-point
    predictor the framing it was trained on."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    side = 0.5 * ((x2 - x1) + (y2 - y1)) * 0.9
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2) + 0.06 * (y2 - y1)
    return dlib.rectangle(round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))


class MobileFaceNetTeacher:
    """InsightFace's MobileFaceNet (trained on MS1M, 128-d) in ncnn's format, on the 112×112 crop
    of the ArcFace template, the alignment it was trained with (`align_face`, from the recorded
    landmarks). InsightFace's models are licensed for non-commercial research only, and a student
    distilled from it inherits that. Its files (`insightface_mfnet_mxnet.param` / `.bin`, from
    github:CrD1997/mobilefacenet_ncnn) are never downloaded: pass their folder, or set
    FACEVERIFY_MOBILEFACENET_DIR."""

    name, dim = "mobilefacenet", 128
    licence = "non-commercial research only (InsightFace MobileFaceNet, MS1M)"
    FILES = "insightface_mfnet_mxnet"
    ENV = "FACEVERIFY_MOBILEFACENET_DIR"

    def __init__(self, model_dir: str | Path | None = None):
        try:
            import ncnn
        except ImportError as exc:
            raise FaceVerifyError(f"the mobilefacenet teacher needs `pip install 'faceverify[distill]'` ({exc})") from None
        folder = Path(model_dir or os.environ.get(self.ENV, ""))
        param, weights = folder / f"{self.FILES}.param", folder / f"{self.FILES}.bin"
        if not (param.is_file() and weights.is_file()):
            raise FaceVerifyError(f"the mobilefacenet teacher needs {param.name} and {weights.name} (from "
                                  f"github:CrD1997/mobilefacenet_ncnn, models/) in a folder given by {self.ENV}")
        self._ncnn, self._net = ncnn, ncnn.Net()
        self._net.opt.num_threads = 1  # one face at a time: threads only add overhead
        if self._net.load_param(str(param)) or self._net.load_model(str(weights)):
            raise FaceVerifyError(f"{folder}: ncnn cannot load {self.FILES}")

    def embed(self, photo: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        vectors = np.empty((len(faces), self.dim), np.float32)
        for i, face in enumerate(faces):
            crop = np.ascontiguousarray(align_face(photo, face.landmarks))
            extractor = self._net.create_extractor()
            extractor.input("data", self._ncnn.Mat.from_pixels(crop, self._ncnn.Mat.PixelType.PIXEL_RGB, 112, 112))
            vectors[i] = np.asarray(extractor.extract("fc1")[1]).reshape(-1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


TEACHER_FACTORIES = {"dlib": DlibTeacher, "mobilefacenet": MobileFaceNetTeacher, "ensemble": ModelTeacher}


def build_teacher(name: str) -> Teacher:
    if name not in TEACHER_FACTORIES:
        raise FaceVerifyError(f"unknown teacher {name!r}; choose one of {sorted(TEACHER_FACTORIES)}")
    return TEACHER_FACTORIES[name]()


def embed_prepared(source: str | Path, prepared: str | Path, teacher: Teacher, *,
                   part_size: int = 512, progress: bool = True) -> int:
    """Teacher embeddings of every crop of `prepared` (a `prepare` output of `source`) that has
    none yet; returns how many were computed."""
    prepared = Path(prepared)
    photos = {sample.key: sample.path for sample in load_samples(source)}
    with open(prepared / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = prepared / TEACHERS_DIR / teacher.name
    out.mkdir(parents=True, exist_ok=True)
    _claim(out / "teacher.json", {"teacher": teacher.name, "licence": teacher.licence,
                                  "weights_sha256": getattr(teacher, "weights_sha256", "")})
    done = set(load_teacher_parts(out)[0])
    todo = [row for row in rows if row["path"] not in done]
    start = len(list(out.glob("part-*.npz")))
    with ThreadPoolExecutor(max_workers=1) as pool, \
            tqdm(total=len(todo), desc=f"teacher {teacher.name}", unit="face", disable=not progress) as bar:
        parts = [todo[i:i + part_size] for i in range(0, len(todo), part_size)]
        def decode(part):
            return [load_rgb(photos[row["source"]]) for row in part]

        # decode the next part's photos in a thread while the teacher runs on this one
        pending = pool.submit(decode, parts[0]) if parts else None
        for index, part in enumerate(parts):
            images = pending.result()
            if index + 1 < len(parts):
                pending = pool.submit(decode, parts[index + 1])
            vectors = embed_faces(teacher, images, [face_from_manifest(row) for row in part])
            bar.update(len(part))
            _save_part(out / f"part-{start + index:05d}.npz", [row["path"] for row in part], vectors)
    return len(todo)


def _claim(path: Path, identity: dict) -> None:
    """Record which model wrote a teacher folder, and refuse to mix another model's vectors in."""
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != identity:
            raise FaceVerifyError(f"{path.parent} holds embeddings of another {identity['teacher']} model "
                                  f"({recorded.get('weights_sha256', '')[:12] or recorded.get('licence')}); "
                                  "delete the folder to embed with this one")
        return
    path.write_text(json.dumps(identity))


def load_teacher_parts(folder: Path) -> tuple[list[str], np.ndarray]:
    """(crop keys, (N, dim) embeddings) of every part a teacher pass has written to `folder`."""
    keys, vectors = [], []
    for part in sorted(Path(folder).glob("part-*.npz")):
        with np.load(part, allow_pickle=False) as data:
            keys += data["keys"].tolist()
            vectors.append(data["embeddings"])
    return keys, (np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))


def _save_part(path: Path, keys: list[str], vectors: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, keys=np.array(keys), embeddings=vectors.astype(np.float16))
    os.replace(tmp, path)
