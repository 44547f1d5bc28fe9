"""The one alignment function: geometry of the similarity transform onto the template."""
import cv2
import numpy as np
import pytest

from faceverify.align import ALIGNED_SIZE, TEMPLATE, align_face, estimate_transform
from faceverify.errors import InvalidImageError


def test_template_maps_onto_itself(face_rgb):
    crop = cv2.resize(face_rgb, (ALIGNED_SIZE, ALIGNED_SIZE))
    matrix = estimate_transform(TEMPLATE)
    assert np.allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-4)
    assert np.abs(align_face(crop, TEMPLATE).astype(int) - crop).max() <= 1


def test_similarity_is_undone(face_rgb):
    """Rotate, scale and shift a photo and its landmarks: alignment lands the landmarks on the
    template again and gives (nearly) the same crop as the unwarped photo."""
    points = np.array([[104, 115], [148, 114], [118, 139], [105, 161], [146, 162]], np.float32)
    warp = cv2.getRotationMatrix2D((125, 125), 23, 1.3)
    warp[:, 2] += (9, -6)
    moved_image = cv2.warpAffine(face_rgb, warp, (250, 250), borderMode=cv2.BORDER_REPLICATE)
    moved_points = points @ warp[:, :2].T + warp[:, 2]
    mapped = moved_points @ estimate_transform(moved_points)[:, :2].T + estimate_transform(moved_points)[:, 2]
    reference = points @ estimate_transform(points)[:, :2].T + estimate_transform(points)[:, 2]
    assert np.abs(mapped - reference).max() < 1e-2
    a, b = align_face(face_rgb, points), align_face(moved_image, moved_points)
    assert np.abs(a[20:-20, 20:-20].astype(float) - b[20:-20, 20:-20]).mean() < 6


def test_scaled_output_keeps_layout(face_rgb):
    points = TEMPLATE * 2
    big = cv2.resize(face_rgb, (224, 224))
    assert align_face(big, points, size=56).shape == (56, 56, 3)


def test_degenerate_landmarks():
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(InvalidImageError, match="degenerate"):
        align_face(image, np.full((5, 2), 10.0))
    with pytest.raises(InvalidImageError, match="NaN"):
        align_face(image, np.full((5, 2), np.nan))
