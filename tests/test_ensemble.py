"""Ensembles of pretrained members: the math against brute force, the checkpoint round trip and the
single ONNX graph, on real faces aligned to each member's template."""
import copy

import numpy as np
import onnx
import pytest
import torch

from faceverify.align import ARCFACE_112, DLIB_150
from faceverify.detect import detect_and_align
from faceverify.errors import ModelError
from faceverify.export import export_embedder
from faceverify.models import Ensemble, MemberSpec, load_checkpoint, save_checkpoint
from faceverify.models.ensemble import combine
from faceverify.runtime import OnnxEmbedder

from .conftest import lfw

PHOTOS = [lfw("Aaron_Peirsol", 1), lfw("Aaron_Peirsol", 2), lfw("Abdullah_Gul", 1), lfw("Adrien_Brody", 1)]
TEMPLATES = (DLIB_150, ARCFACE_112)


@pytest.fixture(scope="module")
def crops(onnx_detector):
    """One (N, size, size, 3) array per template, from one detection per photo."""
    faces = detect_and_align(PHOTOS, onnx_detector, "central", list(map(str, PHOTOS)), TEMPLATES)
    return tuple(np.stack(c) for c in zip(*(f.crops for f in faces)))


@pytest.fixture(scope="module")
def ensemble():
    """dlib's ResNet twice: on its own template (weight 3) and on ArcFace's, centred (weight 1):
    two members that disagree, with every feature of the format in use."""
    from faceverify.models.dlib_resnet import DlibResNet

    dlib = DlibResNet.from_dat()  # face_recognition_models: in the `distill` extra that `make test` installs
    specs = [MemberSpec("dlib", "dlib-resnet-v1", 128, DLIB_150, weight=3.0),
             MemberSpec("dlib-on-arcface", "dlib-resnet-v1", 128, ARCFACE_112, weight=1.0)]
    centre = torch.nn.functional.normalize(torch.linspace(-1, 1, 128), dim=0) * 0.8
    return Ensemble([dlib, copy.deepcopy(dlib)], specs, [None, centre]).eval()


def nchw(crops):
    return [torch.from_numpy(c).permute(0, 3, 1, 2) for c in crops]


@torch.inference_mode()
def test_cosine_is_the_weighted_mean_of_the_members_cosines(ensemble, crops):
    embedding = ensemble(*nchw(crops)).numpy()
    members = [m.numpy() for m in ensemble.member_embeddings(*nchw(crops))]
    assert [s.weight for s in ensemble.specs] == [0.75, 0.25]  # normalised to sum to one
    brute = 0.75 * members[0] @ members[0].T + 0.25 * members[1] @ members[1].T
    np.testing.assert_allclose(embedding @ embedding.T, brute, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(combine(members, [3.0, 1.0]), embedding, atol=1e-6)
    # the centred member: its raw embedding, unit-normalised, minus the centre, unit-normalised
    raw = torch.nn.functional.normalize(ensemble.networks[1](nchw(crops)[1]), dim=1)
    expected = torch.nn.functional.normalize(raw - ensemble.centre_1, dim=1).numpy()
    np.testing.assert_allclose(members[1], expected, atol=1e-6)
    assert ensemble.templates == (DLIB_150, ARCFACE_112)
    with pytest.raises(ModelError, match="takes 2 crops"):
        ensemble(nchw(crops)[0])


def test_checkpoint_and_onnx_round_trip(ensemble, crops, tmp_path):
    path, out = tmp_path / "ens.pt", tmp_path / "ens.onnx"
    written = save_checkpoint(path, ensemble, thresholds={"best_accuracy": {"value": 0.5}}, half=True)
    model, metadata = load_checkpoint(path)
    assert metadata == written and metadata.templates == (DLIB_150, ARCFACE_112)
    assert [m["weight"] for m in metadata.members] == [0.75, 0.25] and metadata.embedding_dim == 256
    with torch.inference_mode():
        full = ensemble(*nchw(crops)).numpy()
        stored = model(*nchw(crops)).numpy()
    assert (full * stored).sum(axis=1).min() > 0.9999  # fp16-stored weights
    export_embedder(path, out)
    onnx.checker.check_model(str(out), full_check=True)
    session = OnnxEmbedder(out)
    assert [i.name for i in session.inputs] == ["faces_dlib_150", "faces_arcface_112"]
    assert session.metadata.members == metadata.members
    for batch in (1, len(crops[0])):
        np.testing.assert_allclose(session(*(c[:batch] for c in crops)), stored[:batch], atol=1e-5)
    # fp16 storage halves the file: two 5.6 M-parameter members in well under 2 × 22 MB
    assert out.stat().st_size < 25e6 and path.stat().st_size < 25e6


@pytest.mark.data_free
def test_weights_must_be_meaningful():
    spec = MemberSpec("x", "dlib-resnet-v1", 128, DLIB_150, weight=0.0)
    with pytest.raises(ModelError, match="not all zero"):
        Ensemble([torch.nn.Identity()], [spec])
    with pytest.raises(ModelError, match="one spec per network"):
        Ensemble([], [])
