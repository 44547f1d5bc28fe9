"""The model-file metadata: one dataclass, read and written in one place, refusing foreign files."""
import pytest
import torch

from faceverify.errors import ModelError
from faceverify.metadata import FORMAT_VERSION, ModelMetadata
from faceverify.models import Embedder, load_checkpoint, save_checkpoint, set_thresholds

pytestmark = pytest.mark.data_free


def test_checkpoint_round_trip_keeps_every_field(tmp_path):
    model = Embedder("resnet18-half-fast", 32)
    thresholds = {"best_accuracy": {"value": 0.42, "pairs": "test", "accuracy": 0.9}}
    written = save_checkpoint(tmp_path / "m.pt", model, thresholds, {"steps": 3, "dev": {"auc": 0.5}})
    _, read = load_checkpoint(tmp_path / "m.pt")
    assert read == written and read.format_version == FORMAT_VERSION
    assert read.threshold() == 0.42 and read.dev == {"auc": 0.5} and read.all_pairs_roc is None
    assert ModelMetadata.from_json(read.to_json()) == read
    with pytest.raises(ModelError, match="no calibrated 'far_1e-2' threshold"):
        read.threshold("far_1e-2")

    updated = set_thresholds(tmp_path / "m.pt", {"far_1e-2": {"value": 0.6}})
    assert load_checkpoint(tmp_path / "m.pt")[1] == updated == read.replace(thresholds={"far_1e-2": {"value": 0.6}})
    assert updated.weights_sha256 == written.weights_sha256  # thresholds are not weights
    assert not updated.flip  # calibrated on plain embeddings unless told
    flipped = set_thresholds(tmp_path / "m.pt", {"best_accuracy": {"value": 0.5}}, flip=True)
    assert load_checkpoint(tmp_path / "m.pt")[1].flip and flipped.flip
    assert set_thresholds(tmp_path / "m.pt", {"best_accuracy": {"value": 0.5}}).flip  # kept


def test_metadata_written_before_flip_existed_reads_as_unflipped():
    old = {"arch": "resnet18", "embedding_dim": 8, "format_version": FORMAT_VERSION}
    assert ModelMetadata.from_dict(old).flip is False


@pytest.mark.parametrize("raw, message", [
    ({"stage": "pnet"}, "not a faceverify embedding model"),
    ({"arch": "resnet18", "embedding_dim": 8, "format_version": 99}, "format 99 is not supported"),
    ([1, 2], "not a faceverify embedding model"),
])
def test_foreign_metadata_is_a_model_error(raw, message):
    with pytest.raises(ModelError, match=message):
        ModelMetadata.from_dict(raw, "x.onnx")


def test_a_foreign_checkpoint_is_a_model_error(tmp_path):
    torch.save({"metadata": "{not json", "state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="bad.pt: unreadable model metadata"):
        load_checkpoint(tmp_path / "bad.pt")


def test_release_writes_fp16_weights_without_thresholds(tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT

    torch.manual_seed(0)
    model = Embedder("resnet18-half-fast", 32).eval()
    save_checkpoint(tmp_path / "best.pt", model, {"best_accuracy": {"value": 0.4}}, {"steps": 7})
    done = subprocess.run([sys.executable, str(ROOT / "training" / "release.py"), str(tmp_path / "best.pt"),
                           str(tmp_path / "release.pt")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    released, metadata = load_checkpoint(tmp_path / "release.pt")
    stored = torch.load(tmp_path / "release.pt", weights_only=True)["state_dict"]
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    assert metadata.weights_dtype == "float16" and metadata.thresholds == {} and metadata.training == {"steps": 7}
    crops = torch.rand(4, 3, 112, 112) * 255
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(model(crops), released(crops))
    assert cosine.min() > 0.999
