"""The one alignment function: geometry of the similarity transform onto a named template."""
import cv2
import numpy as np
import pytest

from faceverify.align import ARCFACE_112, DLIB_150, TEMPLATES, Template, align_face, estimate_transform
from faceverify.errors import InvalidImageError, ModelError


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES)
def test_template_maps_onto_itself(face_rgb, template):
    crop = cv2.resize(face_rgb, (template.size, template.size))
    matrix = estimate_transform(template.points, template.points)
    assert np.allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-4)
    assert np.abs(align_face(crop, template.points, template).astype(int) - crop).max() <= 1


def test_similarity_is_undone(face_rgb):
    """Rotate, scale and shift a photo and its landmarks: alignment lands the landmarks on the
    template again and gives (nearly) the same crop as the unwarped photo."""
    points = np.array([[104, 115], [148, 114], [118, 139], [105, 161], [146, 162]], np.float32)
    warp = cv2.getRotationMatrix2D((125, 125), 23, 1.3)
    warp[:, 2] += (9, -6)
    moved_image = cv2.warpAffine(face_rgb, warp, (250, 250), borderMode=cv2.BORDER_REPLICATE)
    moved_points = points @ warp[:, :2].T + warp[:, 2]
    target = ARCFACE_112.points
    mapped = moved_points @ estimate_transform(moved_points, target)[:, :2].T + estimate_transform(moved_points, target)[:, 2]
    reference = points @ estimate_transform(points, target)[:, :2].T + estimate_transform(points, target)[:, 2]
    assert np.abs(mapped - reference).max() < 1e-2
    a, b = align_face(face_rgb, points), align_face(moved_image, moved_points)
    assert np.abs(a[20:-20, 20:-20].astype(float) - b[20:-20, 20:-20]).mean() < 6


def test_each_template_has_its_size_and_frames_the_same_face(face_rgb):
    """dlib's chip is framed tighter than ArcFace's: the eyes lie farther apart relative to the
    crop (0.36 vs 0.31 of its side), and the crop is 150 pixels."""
    points = np.array([[104, 115], [148, 114], [118, 139], [105, 161], [146, 162]], np.float32)
    assert align_face(face_rgb, points, DLIB_150).shape == (150, 150, 3)
    assert align_face(face_rgb, points, ARCFACE_112).shape == (112, 112, 3)
    eye_gap = {t.name: (t.points[1, 0] - t.points[0, 0]) / t.size for t in (ARCFACE_112, DLIB_150)}
    assert eye_gap["dlib-150"] > eye_gap["arcface-112"] + 0.03


def test_template_round_trips_and_refuses_strangers():
    assert Template.from_dict(DLIB_150.to_dict()) is DLIB_150
    assert Template.from_dict({"name": "arcface-112"}) is ARCFACE_112  # files that name it only
    with pytest.raises(ModelError, match="unknown alignment template"):
        Template.from_dict({"name": "mystery-96"})
    moved = {**ARCFACE_112.to_dict(), "points": (ARCFACE_112.points + 3).tolist()}
    with pytest.raises(ModelError, match="points differ"):
        Template.from_dict(moved)


def test_degenerate_landmarks():
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(InvalidImageError, match="degenerate"):
        align_face(image, np.full((5, 2), 10.0))
    with pytest.raises(InvalidImageError, match="NaN"):
        align_face(image, np.full((5, 2), np.nan))
