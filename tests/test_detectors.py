"""The detector family through the library's one path: every detector by name on real photos, the
fallback chain, the model naming its detector, and bad input through each of them."""
import numpy as np
import pytest

from faceverify import Verifier
from faceverify.detect import detect_and_align, select_face
from faceverify.detect.combined import Fallback
from faceverify.detect.registry import DETECTORS, create_detector, describe, parse, weights_sha256
from faceverify.errors import ImageTooLargeError, InvalidImageError, ModelError, MultipleFacesError, NoFaceError
from faceverify.images import load_rgb
from faceverify.metadata import describe_fingerprint, fingerprint

from .conftest import BUNDLED_ONNX, lfw

NAMES = list(DETECTORS)


@pytest.fixture(scope="module")
def detectors():
    return {name: create_detector(name) for name in NAMES}


@pytest.fixture(scope="module")
def photos():
    return [load_rgb(lfw(n, i)) for n, i in (("Aaron_Peirsol", 1), ("Abdullah_Gul", 3), ("Alicia_Silverstone", 1))]


@pytest.mark.data_free
def test_names_are_checked():
    assert parse("RetinaFace > mtcnn") == ["retinaface", "mtcnn"]
    for bad in ("dlib", "mtcnn>mtcnn", "yunet>retinaface>mtcnn", ""):
        with pytest.raises(ModelError, match="unknown detector"):
            parse(bad)


@pytest.mark.data_free
def test_a_chain_is_fingerprinted_by_both_weights():
    assert weights_sha256("retinaface>mtcnn") not in (weights_sha256("retinaface"), weights_sha256("mtcnn"))
    assert describe("yunet")["name"] == "yunet" and len(describe("yunet")["weights_sha256"]) == 64
    # MTCNN's fingerprint is the weights' hash alone: galleries made before detectors were named
    assert fingerprint("ab" * 32, "mtcnn", weights_sha256("mtcnn")) == "ab" * 32
    other = fingerprint("ab" * 32, "retinaface", weights_sha256("retinaface"))
    assert other.startswith("ab" * 32 + "+retinaface:") and describe_fingerprint(other) == "abababababab (retinaface landmarks)"


@pytest.mark.parametrize("name", NAMES)
def test_each_detector_finds_faces_where_they_are(detectors, photos, name):
    for image, faces in zip(photos, detectors[name].detect(photos)):
        face = select_face(faces, image.shape, "central")
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
        assert lx < nx < rx and mlx < mrx  # the order `align` expects: image left to right
        assert max(ly, ry) < ny < min(mly, mry)
        x1, y1, x2, y2 = face.box
        assert x1 < lx and rx < x2 and y1 < ly and max(mly, mry) < y2 + 5
        assert 60 < x2 - x1 < 170


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_through_each_detector(detectors, photos, rng, tmp_path, name):
    """No face, several faces, a tiny face, a huge photo, a corrupt file: a typed error or the
    right face, never a crash."""
    import cv2

    noise = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    pair = np.concatenate([photos[0], photos[2]], axis=1)
    tiny = np.full((300, 300, 3), 128, np.uint8)  # a 14-pixel face in a plain frame
    tiny[140:154, 140:154] = cv2.resize(photos[0][70:180, 70:180], (14, 14), interpolation=cv2.INTER_AREA)
    huge = cv2.resize(photos[1], (3000, 3000), interpolation=cv2.INTER_CUBIC)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(lfw("Aaron_Peirsol", 1).read_bytes()[:300])
    results = detect_and_align([noise, pair, tiny, huge, corrupt], detectors[name], "single",
                               ["noise", "pair", "tiny", "huge", "corrupt"])
    assert isinstance(results[0], NoFaceError)
    assert isinstance(results[1], MultipleFacesError) and len(results[1].faces) == 2
    if not isinstance(results[2], NoFaceError):  # found where it is, not somewhere in the frame
        assert 135 < results[2].face.box[:4].reshape(2, 2).mean(axis=0).min() < 160
    assert not isinstance(results[3], Exception), results[3]
    assert isinstance(results[4], InvalidImageError)
    with pytest.raises(ImageTooLargeError):
        load_rgb(np.zeros((20_000, 20_000, 3), np.uint8))


def test_fallback_asks_the_second_only_where_the_first_found_nothing(photos):
    class Counting:
        name = "counting"

        def __init__(self, faces):
            self.faces, self.seen = faces, []

        def detect(self, images):
            self.seen.append(len(images))
            return [list(self.faces(image)) for image in images]

    primary = Counting(lambda image: create_detector("retinaface").detect([image])[0])
    secondary = Counting(lambda image: create_detector("mtcnn").detect([image])[0])
    flat = np.full((250, 250, 3), 128, np.uint8)
    found = Fallback(primary, secondary).detect([photos[0], flat, photos[1]])
    assert primary.seen == [3] and secondary.seen == [1]  # only the flat image went on
    assert len(found[0]) == 1 and found[1] == [] and len(found[2]) == 1


def test_the_model_names_its_detector_and_the_verifier_follows_it():
    verifier = Verifier(BUNDLED_ONNX)
    assert verifier.detector_name == verifier.metadata.detector_name
    assert verifier.metadata.detector["weights_sha256"] == weights_sha256(verifier.detector_name)
    other = Verifier(embedder=verifier.embedder, detector="mtcnn")
    assert other.detector_name == "mtcnn" and other.fingerprint == verifier.metadata.weights_sha256
    assert verifier.fingerprint != other.fingerprint  # the default no longer aligns on MTCNN's landmarks


def test_every_detector_verifies_a_real_pair(detectors):
    verifier = Verifier(BUNDLED_ONNX)
    a, b, c = lfw("Abdullah_Gul", 1), lfw("Abdullah_Gul", 3), lfw("Aaron_Peirsol", 1)
    for name, detector in detectors.items():
        v = Verifier(embedder=verifier.embedder, detector=detector)
        assert v.verify(a, b).same and not v.verify(a, c).same, name


@pytest.mark.data_free
def test_the_copy_detected_keeps_the_small_photo_floor_whatever_the_face_knobs():
    retinaface = create_detector("retinaface", min_face_fraction=0.3)  # faces ≥ 75 px of a 250-px photo
    copy, factor = retinaface._scaled(np.zeros((250, 250, 3), np.uint8))
    assert min(copy.shape[:2]) == retinaface.min_input_side and factor == pytest.approx(250 / 128)
    tall, factor = retinaface._scaled(np.zeros((3000, 10, 3), np.uint8))  # bounded by the largest side
    assert max(tall.shape[:2]) <= retinaface.max_side and factor == pytest.approx(3000 / retinaface.max_side)
    plain = create_detector("retinaface")
    assert plain._scaled(np.zeros((250, 250, 3), np.uint8))[1] == 1.0  # LFW photos as they are


@pytest.mark.data_free
def test_a_detector_from_another_file_is_another_pipeline(tmp_path):
    import onnx

    bundled = create_detector("retinaface")
    graph = onnx.load(str(bundled.path))
    graph.doc_string = "the same network, saved again"  # same weights, another file
    other = tmp_path / "retinaface.onnx"
    onnx.save(graph, str(other))
    verifier = Verifier(BUNDLED_ONNX)
    moved = Verifier(embedder=verifier.embedder, detector=type(bundled)(path=other))
    assert moved.detector_name == verifier.detector_name and moved.fingerprint != verifier.fingerprint
