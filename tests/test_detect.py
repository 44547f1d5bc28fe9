"""MTCNN detection on real LFW photos, landmark sanity, and the face-selection policy."""
import numpy as np
import pytest

from faceverify.detect import select_face
from faceverify.errors import MultipleFacesError, NoFaceError
from faceverify.images import load_rgb
from faceverify.detect import detect_and_align

from .conftest import lfw

NAMES = [("Aaron_Peirsol", 1), ("Abdullah_Gul", 3), ("Alicia_Silverstone", 1), ("Adrien_Brody", 2)]


@pytest.fixture(scope="module")
def photos():
    return [load_rgb(lfw(n, i)) for n, i in NAMES]


def two_faces_side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, right], axis=1)


def test_landmarks_are_where_faces_have_them(torch_detector, photos):
    for faces in torch_detector.detect(photos):
        face = select_face(faces, (250, 250), "central")
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
        x1, y1, x2, y2 = face.box
        assert face.score > 0.99
        assert lx < nx < rx and mlx < mrx  # left to right
        assert max(ly, ry) < ny < min(mly, mry)  # eyes above nose above mouth
        assert x1 < lx and rx < x2 and y1 < ly and max(mly, mry) < y2  # inside the box
        assert 60 < x2 - x1 < 160  # LFW faces fill about 45% of the 250px frame


def test_no_face(torch_detector, rng):
    noise = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    flat = np.full((120, 120, 3), 128, np.uint8)
    results = detect_and_align([noise, flat], torch_detector, "single", ["noise", "flat"])
    assert all(isinstance(r, NoFaceError) for r in results)
    assert "noise: no face found" in str(results[0])


def test_several_faces(torch_detector, photos):
    pair = two_faces_side_by_side(photos[0], photos[2])
    faces = torch_detector.detect([pair])[0]
    with pytest.raises(MultipleFacesError, match="2 faces found") as error:
        select_face(faces, pair.shape, "single", "group.jpg")
    assert len(error.value.faces) == 2
    assert select_face(faces, pair.shape, "largest").area == max(f.area for f in faces)
    left = select_face(faces, pair[:, :250].shape, "central")  # nearest the left half's centre
    assert left.box[0] < 250


def test_background_face_is_not_a_competitor(torch_detector, photos):
    import cv2

    small = cv2.resize(photos[2], (60, 60))
    scene = photos[0].copy()
    scene[5:65, 185:245] = small  # a bystander a quarter the size, in the corner
    faces = torch_detector.detect([scene])[0]
    assert len(faces) >= 2
    chosen = select_face(faces, scene.shape, "single")
    assert chosen.box[0] < 185


def test_tight_crop_found_after_padding(torch_detector, photos):
    face = select_face(torch_detector.detect([photos[0]])[0], (250, 250), "central")
    x1, y1, x2, y2 = face.box.astype(int)
    tight = np.ascontiguousarray(photos[0][y1 + 10:y2 - 5, x1 + 5:x2 - 5])
    (result,) = detect_and_align([tight], torch_detector, "single", ["tight"])
    assert not isinstance(result, Exception), result
    assert result.crop.shape == (112, 112, 3)


def test_huge_image_detected_on_a_downscaled_copy(torch_detector, photos):
    import cv2

    big = cv2.resize(photos[0], (3000, 3000), interpolation=cv2.INTER_CUBIC)
    small_face = select_face(torch_detector.detect([photos[0]])[0], (250, 250), "central")
    big_face = select_face(torch_detector.detect([big])[0], big.shape, "central")
    assert np.abs(big_face.landmarks / 12 - small_face.landmarks).max() < 3


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_max_side_detects_on_a_shrunk_copy_in_original_pixels(backend, photos):
    import cv2

    from faceverify.detect import OnnxMTCNN, TorchMTCNN

    make = (lambda **kw: TorchMTCNN(device="cpu", **kw)) if backend == "torch" else OnnxMTCNN
    halves = [cv2.resize(photo, (125, 125), interpolation=cv2.INTER_AREA) for photo in photos]
    on_halves = make().detect(halves)
    shrunk = make(max_side=125).detect(photos)
    full = make().detect(photos)
    for half, got, original in zip(on_halves, shrunk, full):
        assert len(got) == len(half) >= 1
        for a, b in zip(got, half):
            np.testing.assert_allclose(a.box, 2 * b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, 2 * b.landmarks, atol=1e-3)
        subject, coarse = (select_face(faces, (250, 250), "central") for faces in (original, got))
        assert np.abs(subject.landmarks - coarse.landmarks).max() < 6  # coarser, the same face
