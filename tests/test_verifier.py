"""The Python API on the bundled model."""
import numpy as np
import pytest

from faceverify import MultipleFacesError, NoFaceError, Verifier
from faceverify.images import load_rgb

from .conftest import BUNDLED, lfw


def test_verify_decides_with_the_calibrated_threshold(verifier):
    same = verifier.verify(lfw("Abdullah_Gul", 1), lfw("Abdullah_Gul", 3))
    different = verifier.verify(lfw("Abdullah_Gul", 1), lfw("Alicia_Silverstone", 1))
    assert same.same and not different.same
    assert same.threshold == verifier.threshold() == verifier.metadata.thresholds["best_accuracy"]["value"]
    assert same.faces[0].crop.shape == (112, 112, 3)


def test_embed_is_normalised_and_order_preserving(verifier):
    images = [lfw("Aaron_Peirsol", i) for i in (1, 2, 3)]
    batch = verifier.embed(images)
    single = verifier.embed(images[1:2])
    assert batch.shape == (3, verifier.metadata.embedding_dim)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-5)
    assert np.allclose(batch[1], single[0], atol=3e-4)  # batched MTCNN/conv numerics differ slightly


def test_inputs_of_every_kind_agree(verifier):
    path = lfw("Aaron_Peirsol", 1)
    rgb = load_rgb(path)
    a, b, c = verifier.embed([path, path.read_bytes(), rgb])
    assert np.allclose(a, b, atol=1e-6) and np.allclose(a, c, atol=1e-6)


def test_flip_augmentation():
    flipped = Verifier(BUNDLED, device="cpu", flip=True)
    result = flipped.verify(lfw("Abdullah_Gul", 1), lfw("Abdullah_Gul", 3))
    assert result.same


def test_errors_are_typed(verifier):
    with pytest.raises(NoFaceError):
        verifier.verify(np.full((100, 100, 3), 127, np.uint8), lfw("Aaron_Peirsol", 1))
    two = np.concatenate([load_rgb(lfw("Aaron_Peirsol", 1)), load_rgb(lfw("Alicia_Silverstone", 1))], 1)
    with pytest.raises(MultipleFacesError):
        verifier.verify(two, lfw("Aaron_Peirsol", 1))
    results = verifier.analyze([two, lfw("Aaron_Peirsol", 1)])
    assert isinstance(results[0], MultipleFacesError) and results[1].faces_found == 1
