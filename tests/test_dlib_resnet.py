"""DlibResNet: dlib's face ResNet read from its .dat file, checked against dlib on real faces."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from faceverify.errors import ModelError
from faceverify.models.dlib_resnet import DlibResNet, dlib_model_file

from .conftest import lfw

PEOPLE = ["Aaron_Peirsol", "Colin_Powell", "Serena_Williams", "Hugo_Chavez", "Jennifer_Aniston",
          "Gloria_Macapagal_Arroyo", "Arnold_Schwarzenegger", "Tony_Blair"]


@pytest.fixture(scope="module")
def dat_file():
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("dlib's model files need `pip install 'faceverify[distill]'`")
    return dlib_model_file()


@pytest.fixture(scope="module")
def model(dat_file):
    return DlibResNet.from_dat(dat_file)


def test_descriptors_match_dlib_on_real_faces(model, dat_file):
    dlib = pytest.importorskip("dlib", reason="the comparison needs faceverify[distill]")
    from faceverify.images import load_rgb

    detector = dlib.get_frontal_face_detector()
    # the 5-point predictor is public domain; the 68-point one is not and is never used
    landmarks = dlib.shape_predictor(str(dat_file.parent / "shape_predictor_5_face_landmarks.dat"))
    facerec = dlib.face_recognition_model_v1(str(dat_file))
    chips = []
    for name in PEOPLE:
        photo = load_rgb(lfw(name, 1))
        faces = detector(photo, 1)
        assert len(faces), name
        face = max(faces, key=lambda rect: rect.area())
        chips.append(dlib.get_face_chip(photo, landmarks(photo, face), size=150, padding=0.25))
    expected = np.array([np.array(facerec.compute_face_descriptor(chip)) for chip in chips])

    with torch.no_grad():
        got = model(torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2))
    assert got.shape == (len(PEOPLE), 128) and got.dtype == torch.float32
    assert np.abs(got.numpy() - expected).max() <= 1e-5


@pytest.mark.data_free
def test_truncated_or_foreign_files_raise_model_error(dat_file, tmp_path):
    data = dat_file.read_bytes()
    for size in (0, 100, 1000, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut-{size}.dat"
        cut.write_bytes(data[:size])
        with pytest.raises(ModelError, match="truncated"):
            DlibResNet.from_dat(cut)
    with pytest.raises(ModelError):  # a dlib file, but a shape predictor
        DlibResNet.from_dat(dat_file.parent / "shape_predictor_5_face_landmarks.dat")
    with pytest.raises(ModelError, match="cannot read"):
        DlibResNet.from_dat(tmp_path / "missing.dat")


@pytest.mark.data_free
def test_state_dict_round_trips_into_a_fresh_module(model):
    fresh = DlibResNet()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.pixel_mean, model.pixel_mean) and fresh.pixel_mean.abs().sum() > 0
    faces = torch.randint(0, 256, (2, 3, 150, 150), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(faces), model(faces))
        assert torch.equal(model(faces), model(faces.float()))
