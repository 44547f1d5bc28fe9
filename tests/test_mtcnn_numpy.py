"""The ONNX MTCNN's numpy parts against what facenet-pytorch runs: area resampling against torch's
`interpolate(mode="area")`, both NMS variants against torchvision's and facenet-pytorch's own."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from facenet_pytorch.models.utils.detect_face import nms_numpy

from faceverify.detect.mtcnn_onnx import area_resize, crop_tables, nms, summed_area_tables

pytestmark = pytest.mark.data_free


@pytest.mark.parametrize("shape, size", [((250, 250), (151, 151)), ((250, 250), (13, 13)),
                                         ((37, 91), (24, 24)), ((10, 7), (48, 48)), ((5, 300), (3, 77))])
def test_area_resize_is_torch_area_interpolation(rng, shape, size):
    images = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    theirs = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float(), size=size, mode="area")
    np.testing.assert_array_equal(area_resize(images, *size), theirs.permute(0, 2, 3, 1).numpy())


def test_crops_from_the_summed_area_table_are_resized_slices(rng):
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    top, left, height, width = (np.array(v) for v in ([0, 5, 100, 119], [3, 0, 60, 89], [30, 115, 20, 1], [40, 90, 30, 1]))
    crops = crop_tables(summed_area_tables(image[None])[0], top, left, height, width, 24)
    for k, crop in enumerate(crops):
        window = image[top[k]:top[k] + height[k], left[k]:left[k] + width[k]]
        np.testing.assert_array_equal(crop, area_resize(window, 24, 24))


def _boxes(rng, n: int, integer: bool):
    corner = rng.uniform(0, 200, (n, 2))
    boxes = np.column_stack([corner, corner + rng.uniform(5, 60, (n, 2))]).astype(np.float32)
    return np.floor(boxes) if integer else boxes


@pytest.mark.parametrize("trial", range(6))
def test_union_nms_is_torchvision_nms(rng, trial):
    boxes = _boxes(rng, 300, integer=trial % 2 == 1)
    scores = rng.uniform(0.6, 1, 300).astype(np.float32).round(2 if trial >= 4 else 6)  # ties too
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), expected)


@pytest.mark.parametrize("trial", range(6))
def test_min_nms_is_facenet_pytorch_numpy_nms(rng, trial):
    n = 12  # facenet-pytorch's argsort is stable only this short: its tie order is defined
    boxes = _boxes(rng, n, integer=trial % 2 == 1) / 4 + 50
    scores = rng.uniform(0.6, 1, n).astype(np.float32).round(1 if trial >= 3 else 6)
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, mode="min"), nms_numpy(boxes, scores, 0.7, "Min"))


def test_nms_of_nothing():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
