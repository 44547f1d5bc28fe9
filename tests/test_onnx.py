"""ONNX path: export parity with torch, ONNX MTCNN parity with facenet-pytorch, torch-free use."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from faceverify.detect import OnnxMTCNN
from faceverify.embed import TorchEmbedder
from faceverify.export import export_embedder
from faceverify.images import load_rgb
from faceverify.runtime import OnnxEmbedder
from faceverify.verifier import Verifier

from .conftest import BUNDLED, BUNDLED_ONNX, ROOT, lfw

PHOTOS = [lfw(n, i) for n, i in [("Aaron_Peirsol", 1), ("Abdullah_Gul", 3), ("Alicia_Silverstone", 2),
                                 ("Adrien_Brody", 4), ("Aaron_Peirsol", 3), ("Abdullah_Gul", 1)]]
#: O-net gives two boxes of this face the same (saturated) score: the final NMS's tie order decides
#: between boxes 5 px apart
EQUAL_SCORES = lfw("Gray_Davis", 9)


@pytest.fixture(scope="module")
def crops(torch_detector):
    """The bundled model's inputs: one (N, size, size, 3) array per template it takes."""
    from faceverify.detect import detect_and_align

    templates = OnnxEmbedder(BUNDLED_ONNX).metadata.templates
    faces = detect_and_align(PHOTOS, torch_detector, "central", list(map(str, PHOTOS)), templates)
    return tuple(np.stack(c) for c in zip(*(f.crops for f in faces)))


def test_export_parity_and_metadata(tmp_path, crops):
    out = tmp_path / "m.onnx"
    metadata = export_embedder(BUNDLED, out)
    onnx.checker.check_model(str(out), full_check=True)
    session = OnnxEmbedder(out)
    assert session.providers[-1] == "CPUExecutionProvider"
    assert session.metadata == metadata  # the same ModelMetadata, read back from the file
    assert session.metadata.thresholds == TorchEmbedder.from_checkpoint(BUNDLED, "cpu").metadata.thresholds
    torch_out = TorchEmbedder.from_checkpoint(BUNDLED, "cpu")(*crops)
    for batch in (1, 4, len(PHOTOS)):  # dynamic batch
        assert np.abs(session(*(c[:batch] for c in crops)) - torch_out[:batch]).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert int(props["embedding_dim"]) == metadata.embedding_dim
    assert json.loads(props["faceverify"])["members"] == metadata.members


def test_half_precision_export_keeps_the_embeddings(tmp_path, untrained_checkpoint, crops):
    """fp16 compute (for GPUs) is for a single network, e.g. a trained ResNet."""
    full_path, half_path = tmp_path / "f.onnx", tmp_path / "h.onnx"
    export_embedder(untrained_checkpoint, full_path)
    export_embedder(untrained_checkpoint, half_path, precision="fp16")
    half, full = OnnxEmbedder(half_path), OnnxEmbedder(full_path)
    assert half.metadata.onnx["precision"] == "fp16" and half_path.stat().st_size < 0.6 * full_path.stat().st_size
    arcface = crops[[t.name for t in OnnxEmbedder(BUNDLED_ONNX).metadata.templates].index("arcface-112")]
    embeddings = half(arcface)
    assert embeddings.dtype == np.float32
    assert (embeddings * full(arcface)).sum(axis=1).min() > 0.999  # cosine to the fp32 model's


def test_float_input_export(tmp_path, crops):
    out = tmp_path / "f.onnx"
    export_embedder(BUNDLED, out, input_dtype="float32")
    floats = [c.astype(np.float32) for c in crops]
    assert np.abs(OnnxEmbedder(out)(*floats) - OnnxEmbedder(BUNDLED_ONNX)(*crops)).max() < 1e-4


def test_bundled_onnx_matches_bundled_checkpoint(crops):
    """The shipped default on both paths: same weights, same embeddings of real faces."""
    onnx_model, torch_model = OnnxEmbedder(BUNDLED_ONNX), TorchEmbedder.from_checkpoint(BUNDLED, "cpu")
    assert onnx_model.metadata.weights_sha256 == torch_model.metadata.weights_sha256
    assert np.abs(onnx_model(*crops) - torch_model(*crops)).max() < 1e-4


def test_onnx_mtcnn_matches_facenet_pytorch(torch_detector):
    images = [load_rgb(p) for p in PHOTOS + [EQUAL_SCORES]]
    images.append(np.concatenate(images[:2], axis=1))  # two faces
    onnx_faces, torch_faces = OnnxMTCNN().detect(images), torch_detector.detect(images)
    for mine, theirs in zip(onnx_faces, torch_faces):
        assert len(mine) == len(theirs)
        for a, b in zip(sorted(mine, key=lambda f: f.box[0]), sorted(theirs, key=lambda f: f.box[0])):
            assert np.abs(a.box - b.box).max() < 1.0
            assert np.abs(a.landmarks - b.landmarks).max() < 1.0
            assert abs(a.score - b.score) < 1e-3


def test_torch_free_verifier():
    """With torch made unimportable, the ONNX verifier still detects, aligns, embeds and decides."""
    script = f"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "facenet_pytorch"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Blocker())
from faceverify import Verifier
v = Verifier.from_onnx({str(BUNDLED_ONNX)!r})
same = v.verify({str(PHOTOS[1])!r}, {str(PHOTOS[5])!r})
diff = v.verify({str(PHOTOS[1])!r}, {str(PHOTOS[2])!r})
assert "torch" not in sys.modules
print(same.same, diff.same, v.providers[0], type(v.detector).__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "CPUExecutionProvider", "RetinaFace"]  # the model's detector


def test_onnx_and_torch_verifiers_agree():
    pair = (PHOTOS[0], PHOTOS[4])
    torch_score = Verifier(BUNDLED, device="cpu").verify(*pair).score
    onnx_verifier = Verifier.from_onnx(BUNDLED_ONNX)
    assert onnx_verifier.providers == ["CPUExecutionProvider"]
    assert abs(onnx_verifier.verify(*pair).score - torch_score) < 1e-3


def test_foreign_onnx_file_is_refused(tmp_path):
    from faceverify.errors import ModelError

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        OnnxEmbedder(tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="not a faceverify embedding model"):
        OnnxEmbedder(ROOT / "weights" / "mtcnn" / "pnet.onnx")
