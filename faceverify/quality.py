"""Per-face quality: can a decision about this face be trusted?

Measured from what the pipeline already has (the five landmarks in image pixels, the detector's
score, the aligned crop), so it costs a small fraction of an embedding (bench/bench_quality.py):

- head pose (yaw, pitch, roll, degrees) from the landmarks, by fitting a mean 3-D face of the same
  five points under weak perspective (`head_pose`);
- the distance between the eyes in the original photo's pixels;
- sharpness (variance of the Laplacian) and exposure (mean and spread of grey) of the aligned crop;
- the detector's confidence.

A `QualityModel`, fitted per embedding model on training data only (`training/fit_quality.py`)
and stored in its metadata, turns these into one score in [0, 1]: the predicted probability
that a genuine comparison with this face passes the model's operating threshold. Below the
model's floor a face is unreliable, and `problems` says why in words.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

#: MTCNN's five points on a mean frontal face (x right, y up, z towards the camera), in the
#: ArcFace template's units (eyes 35 apart, ~63 mm): x and y are the template's points (within a
#: pixel of the median of MTCNN's points on LFW's train split), depths anthropometric: the nose
#: tip ~28 mm in front of the pupils, the mouth corners ~25 mm behind the nose tip.
FACE_3D = np.array([[-17.62, 0.0, 0.0], [17.62, 0.0, 0.0], [0.0, -20.14, 15.7],
                    [-14.59, -40.67, 1.7], [14.59, -40.67, 1.7]], np.float64)


@dataclass(frozen=True)
class HeadPose:
    """Degrees, as R = Rz(roll) Ry(yaw) Rx(pitch) turns the frontal face. yaw > 0: the nose points
    to the image's right; pitch > 0: the face looks down; roll > 0: the head leans anticlockwise
    in the image (the eye on the image's right is higher)."""

    yaw: float
    pitch: float
    roll: float


def head_pose(landmarks: np.ndarray) -> tuple[HeadPose, float]:
    """(pose, scale in image pixels per `FACE_3D` unit) of a face from its five landmarks: the
    least-squares weak-perspective projection of `FACE_3D` onto them, its rotation made orthonormal."""
    points = np.asarray(landmarks, np.float64).reshape(5, 2) * [1.0, -1.0]  # y up, like the model
    model = FACE_3D - FACE_3D.mean(0)
    projection, *_ = np.linalg.lstsq(model, points - points.mean(0), rcond=None)  # (3, 2)
    # the nearest pair of orthonormal rows (polar decomposition): unlike Gram-Schmidt it treats
    # image x and y alike, so turning the photo turns only the roll
    u, singular, vt = np.linalg.svd(projection.T, full_matrices=False)
    r1, r2 = u @ vt
    scale = float(singular.mean())
    r3 = np.cross(r1, r2)  # rows of the rotation: image x, image y, towards the camera
    # R = Rz(roll) Ry(yaw) Rx(pitch), read off its rows
    yaw = math.degrees(math.asin(np.clip(-r3[0], -1, 1)))
    pitch = math.degrees(math.atan2(r3[1], r3[2]))
    roll = math.degrees(math.atan2(r2[0], r1[0]))
    return HeadPose(yaw, pitch, roll), scale


@dataclass
class FaceQuality:
    """What makes one face easy or hard to recognise, and the model's verdict (`score`)."""

    yaw: float
    pitch: float
    roll: float
    eye_distance: float  # pixels of the original photo between the eye landmarks
    sharpness: float  # variance of the Laplacian of the aligned grey crop
    brightness: float  # mean grey of the crop, 0-1
    contrast: float  # standard deviation of grey, 0-1
    det_score: float
    #: each member network's feature norm before normalisation (empty: the model has none)
    feature_norms: list = field(default_factory=list)
    whole_image: bool = False  # the detector found no face: the whole photo was taken as one
    score: float | None = None  # [0, 1] from the model's `QualityModel`; None without one
    reliable: bool = True
    problems: list = field(default_factory=list)  # why not reliable, in words

    def to_dict(self) -> dict:
        out = asdict(self)
        out["feature_norms"] = [round(float(v), 4) for v in self.feature_norms]
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def measure(face, crop: np.ndarray, feature_norms=()) -> FaceQuality:
    """The quality measures of a detected `face` (image-pixel landmarks), its aligned RGB crop
    and, where the embedder reports them, its members' feature norms."""
    pose, _ = head_pose(face.landmarks)
    left, right = np.asarray(face.landmarks, np.float64)[:2]
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return FaceQuality(pose.yaw, pose.pitch, pose.roll, float(np.linalg.norm(right - left)),
                       float(cv2.Laplacian(grey, cv2.CV_64F).var()), float(grey.mean() / 255),
                       float(grey.std() / 255), float(face.score), [float(v) for v in feature_norms],
                       face.whole_image)


#: inputs of the quality model, each a function of a `FaceQuality`; a model whose embedder reports
#: member feature norms adds one input per member, named `NORM_PREFIX` + the member's index
FEATURES = {
    "abs_yaw": lambda q: abs(q.yaw) / 45,
    "yaw_sq": lambda q: (q.yaw / 45) ** 2,
    "abs_pitch": lambda q: abs(q.pitch) / 30,
    "abs_roll": lambda q: abs(q.roll) / 30,
    "log_eye_distance": lambda q: math.log(max(q.eye_distance, 1.0)),
    "log_sharpness": lambda q: math.log1p(max(q.sharpness, 0.0)),
    "exposure": lambda q: abs(q.brightness - 0.5),
    "contrast": lambda q: q.contrast,
    "det_uncertainty": lambda q: math.log(max(1.0 - q.det_score, 1e-6)),
}


NORM_PREFIX = "norm_"


def _feature(name: str):
    if name in FEATURES:
        return FEATURES[name]
    member = name.removeprefix(NORM_PREFIX)
    if member != name and member.isdigit():
        return lambda q: q.feature_norms[int(member)]
    raise ValueError(f"unknown quality feature {name!r}")


def feature_names(members: int) -> list[str]:
    """The quality model's inputs for an embedder reporting `members` feature norms."""
    return [*FEATURES, *(f"{NORM_PREFIX}{i}" for i in range(members))]


def feature_matrix(qualities, names: list[str]) -> np.ndarray:
    functions = [_feature(n) for n in names]
    return np.array([[f(q) for f in functions] for q in qualities], np.float64).reshape(-1, len(names))


@dataclass
class QualityModel:
    """Logistic regression from `FEATURES` to P(a genuine comparison with this face passes the
    operating threshold), with the floor below which a face is unreliable. Stored in the
    embedding model's metadata (`ModelMetadata.quality`), fitted by `fit`."""

    mean: list
    std: list
    coef: list
    intercept: float
    floor: float = 0.5
    features: list = field(default_factory=lambda: list(FEATURES))
    fitted_on: dict = field(default_factory=dict)  # data, operating point, counts

    def scores(self, qualities) -> np.ndarray:
        x = (feature_matrix(qualities, self.features) - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-(x @ np.asarray(self.coef) + self.intercept)))

    def apply(self, quality: FaceQuality) -> FaceQuality:
        """`quality` with its score, reliability and problems filled in."""
        quality.score = float(self.scores([quality])[0])
        quality.reliable = quality.score >= self.floor
        quality.problems = [] if quality.reliable else problems(quality, self.floor)
        return quality

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "QualityModel":
        model = cls(**raw)
        for name in model.features:
            _feature(name)  # refuses a model file whose inputs this version cannot compute
        return model

    @classmethod
    def fit(cls, qualities, successes: np.ndarray, weights: np.ndarray | None = None, l2: float = 1e-2,
            **info) -> "QualityModel":
        """Fit on faces with the fraction of their genuine comparisons that passed (`successes`,
        in [0, 1]) and how many there were (`weights`): Newton steps on the weighted,
        L2-regularised cross-entropy. The inputs: `FEATURES` and the faces' member norms."""
        names = feature_names(len(qualities[0].feature_norms))
        x = feature_matrix(qualities, names)
        mean, std = x.mean(0), x.std(0) + 1e-9
        x = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
        y = np.asarray(successes, np.float64)
        w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
        w = w / w.mean()
        beta = np.zeros(x.shape[1])
        penalty = np.r_[np.full(x.shape[1] - 1, l2), 0.0] * len(y)
        for _ in range(50):
            p = 1 / (1 + np.exp(-x @ beta))
            gradient = x.T @ (w * (p - y)) + penalty * beta
            hessian = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(penalty)
            step = np.linalg.solve(hessian, gradient)
            beta -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(mean.tolist(), std.tolist(), beta[:-1].tolist(), float(beta[-1]), features=names, fitted_on=info)


#: the pose, size and image limits `problems` names a face by (hints; the score is the gate).
#: Pitch from five landmarks is noisy: on the LFW dev-pair photos (press photos, nearly all level)
#: RetinaFace's landmarks put 4.1 % of faces beyond 35° and 0.9 % beyond 40° (MTCNN's: 2.1 / 0.5 %)
HINTS = {"yaw": 35.0, "pitch": 40.0, "roll": 30.0, "eye_distance": 30.0, "sharpness": 15.0,
         "dark": 0.2, "bright": 0.85, "det_score": 0.95}


def problems(quality: FaceQuality, floor: float | None = None) -> list[str]:
    """What is wrong with a face, in words (empty for a good one)."""
    q, out = quality, []
    if abs(q.yaw) > HINTS["yaw"]:
        out.append(f"face turned ~{abs(q.yaw):.0f}° to the side")
    if abs(q.pitch) > HINTS["pitch"]:
        out.append(f"face tilted ~{abs(q.pitch):.0f}° {'down' if q.pitch > 0 else 'up'}")
    if abs(q.roll) > HINTS["roll"]:
        out.append(f"head leaning ~{abs(q.roll):.0f}°")
    if q.eye_distance < HINTS["eye_distance"]:
        out.append(f"face {q.eye_distance:.0f} px between the eyes")
    if q.sharpness < HINTS["sharpness"]:
        out.append(f"blurred (sharpness {q.sharpness:.0f})")
    if q.brightness < HINTS["dark"]:
        out.append("too dark")
    elif q.brightness > HINTS["bright"]:
        out.append("overexposed")
    if q.whole_image:
        out.append("no face detected: the whole photo was taken as the face")
    elif q.det_score < HINTS["det_score"]:
        out.append(f"uncertain face (detector {q.det_score:.2f})")
    if floor is not None and q.score is not None and q.score < floor and not out:
        out.append(f"low quality ({q.score:.2f} < {floor:.2f})")
    return out
