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
