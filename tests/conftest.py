"""Shared fixtures: real photos from ../shared/data, the bundled model, real aligned crops."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
LFW = DATA / "lfw" / "images"
DEV_PAIRS = DATA / "lfw" / "pairs_dev.txt"
BUNDLED = ROOT / "weights" / "faceverify-default.pt"
BUNDLED_ONNX = ROOT / "weights" / "faceverify-default.onnx"

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def lfw(name: str, number: int = 1) -> Path:
    return LFW / name / f"{name}_{number:04d}.jpg"


def pytest_collection_modifyitems(config, items):
    """Without ../shared/data, skip what reads it; tests marked `data_free` still run."""
    if not DATA.is_dir():
        skip = pytest.mark.skip(reason=f"face data not found at {DATA}")
        for item in items:
            if item.get_closest_marker("data_free") is None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def end_to_end_onnx(tmp_path_factory) -> Path:
    """The bundled model's end-to-end graph (`faceverify export --end-to-end`), exported once."""
    from faceverify.e2e.model import export_end_to_end

    path = tmp_path_factory.mktemp("e2e") / "faceverify-e2e.onnx"
    export_end_to_end(path)
    return path


@pytest.fixture(scope="session")
def torch_detector():
    from faceverify.detect import TorchMTCNN

    return TorchMTCNN(device="cpu")


@pytest.fixture(scope="session")
def verifier():
    """The bundled default model on the torch path."""
    from faceverify import Verifier

    return Verifier(BUNDLED, device="cpu")


@pytest.fixture(scope="session")
def face_rgb():
    from faceverify.images import load_rgb

    return load_rgb(lfw("Aaron_Peirsol", 1))


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised model, for pipeline checks that need no accuracy."""
    import torch

    from faceverify.models import Embedder, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "untrained.pt"
    save_checkpoint(path, Embedder("resnet18-half-fast", 64),
                    thresholds={"best_accuracy": {"value": 0.5, "pairs": "none (untrained)"}},
                    training={"note": "untrained random initialisation"})
    return path


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


def celeba_subset(folder: Path, identities: int, per_identity: int) -> Path:
    """A manifest of the first `identities` CelebA people, `per_identity` photos each (absolute
    paths: the photos stay in ../shared/data)."""
    with open(DATA / "celeba" / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_identity = {}
    for row in rows:
        by_identity.setdefault(row["identity"], []).append(row)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "identity", "split"])
        writer.writeheader()
        for person in list(by_identity.values())[:identities]:
            for r in person[:per_identity]:
                writer.writerow({"path": str(DATA / "celeba" / r["path"]), "identity": r["identity"],
                                 "split": "train"})
    return manifest


@pytest.fixture(scope="session")
def onnx_detector():
    """The ONNX MTCNN: the same faces as `torch_detector` (test_onnx), 2-3× faster, for fixtures
    that only need faces found."""
    from faceverify.detect import OnnxMTCNN

    return OnnxMTCNN()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, onnx_detector):
    """150 CelebA identities (8 images each) aligned by `prepare`, the way training data is made."""
    from faceverify.prepare import prepare_dataset

    manifest = celeba_subset(tmp_path_factory.mktemp("celeba"), 150, 8)
    dest = tmp_path_factory.mktemp("aligned") / "celeba"
    report = prepare_dataset(manifest, dest, onnx_detector, progress=False)
    assert report.aligned >= 0.95 * (len(manifest.read_text().splitlines()) - 1)
    return dest
