"""Per-face quality (`faceverify.quality`): head pose from the landmarks against known rotations of
real faces, the quality model's contract and its round trip through the model files, the
enrolment gate, the `reliable` flag in the API, the CLI's JSON and the UI; photos that are tight
crops (whole-image fallback, `--assume-cropped`)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from faceverify.quality import FACE_3D, FEATURES, FaceQuality, QualityModel, head_pose, problems

from .conftest import BUNDLED, BUNDLED_ONNX, ROOT, lfw

#: a frontal face, and faces turned far to either side (LFW dev_eval)
FRONTAL = lfw("Aaron_Peirsol", 1)
TURNED_RIGHT = lfw("Michael_Kostelnik", 2)  # nose towards the image's right
TURNED_LEFT = lfw("Franz_Muentefering", 3)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = map(math.radians, (yaw, pitch, roll))
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return rz @ ry @ rx


@pytest.mark.data_free
@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-50, 15, -10), (20, -20, 25), (65, 5, 0)])
def test_pose_recovers_the_rotation_of_the_face_model(angles):
    """Brute force: the mean face turned by known angles and projected (scaled, y down) gives
    those angles back, and its scale."""
    points = FACE_3D @ _rotation(*angles).T
    pose, scale = head_pose(points[:, :2] * [2.5, -2.5] + [120, 90])
    assert np.allclose([pose.yaw, pose.pitch, pose.roll], angles, atol=1e-6) and scale == pytest.approx(2.5)


@pytest.fixture(scope="module")
def detector():
    from faceverify.detect import OnnxMTCNN

    return OnnxMTCNN()


def _face(detector, image):
    faces = detector.detect([image])[0]
    return max(faces, key=lambda f: f.area)


@pytest.mark.parametrize("angle", [-25, -10, 15, 30])
def test_roll_follows_a_known_rotation_of_a_real_photo(detector, angle):
    from faceverify.images import load_rgb

    image = load_rgb(FRONTAL)
    before = head_pose(_face(detector, image).landmarks)[0]
    centre = (image.shape[1] / 2, image.shape[0] / 2)
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, angle, 1.0), image.shape[1::-1],
                             borderMode=cv2.BORDER_REPLICATE)  # angle > 0: anticlockwise on screen
    after = head_pose(_face(detector, rotated).landmarks)[0]
    assert after.roll - before.roll == pytest.approx(angle, abs=3)
    assert abs(after.yaw - before.yaw) < 5 and abs(before.yaw) < 15


@pytest.mark.parametrize("photo", [TURNED_RIGHT, TURNED_LEFT, FRONTAL])
def test_a_mirrored_photo_flips_yaw(detector, photo):
    from faceverify.images import load_rgb

    image = load_rgb(photo)
    pose = head_pose(_face(detector, image).landmarks)[0]
    mirrored = head_pose(_face(detector, np.ascontiguousarray(image[:, ::-1])).landmarks)[0]
    assert mirrored.yaw == pytest.approx(-pose.yaw, abs=5)
    if photo is FRONTAL:  # on a profile MTCNN guesses the far eye, differently in each direction
        assert mirrored.roll == pytest.approx(-pose.roll, abs=3) and mirrored.pitch == pytest.approx(pose.pitch, abs=3)
    else:
        assert abs(pose.yaw) > 45 and np.sign(pose.yaw) == (1 if photo is TURNED_RIGHT else -1)


@pytest.mark.data_free
def test_quality_model_learns_what_predicts_success_and_round_trips():
    """Brute force: when success falls with yaw, the fitted score falls with yaw; the dict form
    (as stored in a model file) scores the same."""
    rng = np.random.default_rng(0)
    yaws = rng.uniform(-80, 80, 400)
    faces = [FaceQuality(y, 0.0, 0.0, 60.0, 100.0, 0.5, 0.2, 0.999, feature_norms=[12.0]) for y in yaws]
    success = 1 / (1 + np.exp((np.abs(yaws) - 45) / 8))
    model = QualityModel.fit(faces, success, np.full(400, 5.0))
    assert model.features == [*FEATURES, "norm_0"]
    scores = model.scores(faces)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.corrcoef(scores, success)[0, 1] > 0.95
    again = QualityModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(again.scores(faces), scores)
    turned = model.apply(FaceQuality(75.0, 0.0, 0.0, 60.0, 100.0, 0.5, 0.2, 0.999, [12.0]))
    assert not turned.reliable and turned.problems == ["face turned ~75° to the side"]
    with pytest.raises(ValueError, match="unknown quality feature"):
        QualityModel.from_dict({**model.to_dict(), "features": ["nope", *model.features[1:]]})


@pytest.mark.data_free
def test_problems_name_what_is_wrong():
    small = FaceQuality(5.0, 45.0, 2.0, 18.0, 8.0, 0.1, 0.2, 0.97)
    assert problems(small) == ["face tilted ~45° down", "face 18 px between the eyes",
                               "blurred (sharpness 8)", "too dark"]


@pytest.fixture(scope="module")
def onnx_verifier():
    from faceverify import Verifier

    return Verifier(BUNDLED_ONNX)


def test_the_bundled_model_carries_its_quality_model_in_both_files(onnx_verifier, verifier):
    """Same model, same quality calibration: .pt and .onnx score a face alike."""
    assert onnx_verifier.quality_model is not None and verifier.quality_model is not None
    assert onnx_verifier.quality_model.to_dict() == verifier.quality_model.to_dict()
    assert onnx_verifier.quality_model.fitted_on["split"] == "train"
    assert [m for m in onnx_verifier.quality_model.features if m.startswith("norm_")] == ["norm_0", "norm_1"]
    a, b = onnx_verifier.analyze([FRONTAL])[0], verifier.analyze([FRONTAL])[0]
    assert a.quality.score == pytest.approx(b.quality.score, abs=1e-3)
    assert np.allclose(a.quality.feature_norms, b.quality.feature_norms, rtol=1e-4)


def test_a_profile_is_unreliable_and_a_frontal_face_is_not(onnx_verifier):
    frontal, profile = onnx_verifier.analyze([FRONTAL, TURNED_LEFT])
    assert frontal.reliable and frontal.quality.score >= onnx_verifier.quality_model.floor
    assert not profile.reliable and any("to the side" in p for p in profile.quality.problems)
    result = onnx_verifier.verify(FRONTAL, TURNED_LEFT)
    assert not result.reliable and result.problems[0].startswith("second photo: face turned")
    as_json = result.to_dict()
    assert as_json["reliable"] is False and as_json["faces"][1]["quality"]["score"] < onnx_verifier.quality_model.floor


def test_enrolment_refuses_a_profile_and_says_why(onnx_verifier, tmp_path):
    from faceverify.gallery import Gallery

    with Gallery(tmp_path / "g.db", onnx_verifier) as gallery:
        report = gallery.enroll("Franz", [TURNED_LEFT, lfw("Franz_Muentefering", 1)])
        assert report.added == [str(lfw("Franz_Muentefering", 1))]
        ((source, reason),) = report.rejected
        assert source == str(TURNED_LEFT) and "turned" in reason and "quality" in reason
        (stored,) = gallery.show("Franz")
        assert stored["quality"] >= gallery.quality.min_quality
        # a lower floor (the gate is configurable) lets it in
        gallery.quality.min_quality = 0.0
        assert gallery.enroll("Franz", [TURNED_LEFT]).added == [str(TURNED_LEFT)]
        (answer,) = gallery.identify([TURNED_LEFT])
        assert answer.to_dict()["reliable"] is False and answer.problems


def test_cli_json_carries_the_flag_and_text_says_why(tmp_path):
    env_model = ["--model", str(BUNDLED_ONNX)]
    done = subprocess.run([sys.executable, "-m", "faceverify.cli", "verify", str(FRONTAL), str(TURNED_LEFT),
                           "--json", *env_model], capture_output=True, text=True, cwd=ROOT)
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["reliable"] is False and "turned" in out["problems"][0]
    assert out["faces"][0]["quality"]["reliable"] is True and "yaw" in out["faces"][0]["quality"]
    plain = subprocess.run([sys.executable, "-m", "faceverify.cli", "verify", str(FRONTAL), str(TURNED_LEFT),
                            *env_model], capture_output=True, text=True, cwd=ROOT)
    assert "(unreliable: second photo: face turned" in plain.stdout
    floor = subprocess.run([sys.executable, "-m", "faceverify.cli", "verify", str(FRONTAL), str(TURNED_LEFT),
                            "--json", "--quality-floor", "0", *env_model], capture_output=True, text=True, cwd=ROOT)
    assert json.loads(floor.stdout)["reliable"] is True


def test_the_ui_says_a_decision_is_unreliable(onnx_verifier, tmp_path):
    from faceverify_app.main import FaceApp, OutputFiles

    app = FaceApp(onnx_verifier, tmp_path / "g.db", OutputFiles(tmp_path))
    verdict, *_ = app.verify(str(FRONTAL), str(TURNED_LEFT), onnx_verifier.threshold(), 1, 1)
    assert "**Unreliable:**" in verdict and "turned" in verdict
    verdict, *_ = app.verify(str(FRONTAL), str(lfw("Aaron_Peirsol", 2)), onnx_verifier.threshold(), 1, 1)
    assert "Unreliable" not in verdict


def _tight(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The photo cut from the brows to the chin."""
    (lx, ly), (rx, _) = landmarks[:2]
    d = rx - lx
    return np.ascontiguousarray(image[int(ly - 0.35 * d):int(landmarks[3:, 1].max() + 0.6 * d),
                                      int(lx - 0.45 * d):int(rx + 0.45 * d)])


def test_a_tight_crop_is_taken_whole_and_verified(onnx_verifier, detector):
    """MTCNN's proposals miss (or misplace) a face cut brows to chin; the whole-image fallback and
    --assume-cropped find its landmarks with O-Net, and the decision is right. The model's own
    detector (RetinaFace) finds such a crop by itself."""
    from faceverify import Verifier
    from faceverify.images import load_rgb

    image = load_rgb(FRONTAL)
    crop = _tight(image, _face(detector, image).landmarks)
    with_mtcnn = Verifier(embedder=onnx_verifier.embedder, detector="mtcnn")
    found = with_mtcnn.analyze([crop])[0]
    assert found.face.whole_image and found.face.to_dict()["whole_image"] is True
    assert found.quality.whole_image and found.face.score > 0.7
    other = lfw("Aaron_Peirsol", 2)
    for verifier in (with_mtcnn, onnx_verifier):
        assert verifier.verify(crop, other).same
        assert not verifier.verify(crop, lfw("Michael_Kostelnik", 1)).same
    assert not onnx_verifier.analyze([crop])[0].face.whole_image
    cropped = Verifier(BUNDLED_ONNX, assume_cropped=True)
    face = cropped.analyze([crop])[0]
    assert face.face.whole_image and cropped.verify(crop, crop).same
    # a photo that is not a crop: --assume-cropped still takes the whole frame, and marks it
    whole = cropped.analyze([image])[0]
    assert whole.face.whole_image and whole.quality.whole_image
