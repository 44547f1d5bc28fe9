"""Operating points: the all-pairs ROC table and FPIR arithmetic against brute force, and a gallery
whose threshold follows its size."""
import shutil

import numpy as np
import pytest

from faceverify.operating import (describe, far_for_fpir, fpir_for_far, roc_table,
                                  threshold_for_far)

from .conftest import BUNDLED, DATA


@pytest.mark.data_free
def test_fpir_and_far_are_inverse():
    for n in (1, 7, 60, 10_000):
        far = far_for_fpir(0.01, n)
        assert fpir_for_far(far, n) == pytest.approx(0.01)
        assert far == pytest.approx(0.01 / n, rel=0.01)  # ≈ FPIR / N for small rates


@pytest.mark.data_free
def test_roc_table_against_brute_force():
    rng = np.random.default_rng(5)
    genuine, impostor = rng.normal(0.6, 0.15, 400), rng.normal(0.1, 0.12, 50_000)
    table = roc_table(genuine, impostor, points=40)
    assert table[0][3] == 0 and table[-1][3] == len(impostor)
    for threshold, far, tar, accepted in table:
        assert accepted == (impostor >= threshold).sum()
        assert far == accepted / len(impostor)
        assert tar == pytest.approx(np.mean(genuine >= threshold), abs=1e-6)
    for target in (1e-4, 1e-3, 1e-2):
        t = threshold_for_far(table, target)
        assert np.mean(impostor >= t) <= target
    point = describe(table, threshold_for_far(table, 1e-3), 60, "test")
    assert point.far <= 1e-3 and point.fpir == pytest.approx(fpir_for_far(point.far, 60))


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory, verifier):
    """The bundled checkpoint with an all-pairs ROC measured on 240 real LFW dev_eval photos."""
    from faceverify.data import load_samples
    from faceverify.evaluation import AlignedIdentities
    from faceverify.models import set_thresholds
    from faceverify.metadata import ALL_PAIRS_ROC

    samples = [s for s in load_samples(DATA / "lfw" / "manifest.csv", "dev_eval")][:240]
    aligned = AlignedIdentities.build(samples, verifier.detector, templates=verifier.templates, progress=False)
    genuine, impostor = aligned.scores(verifier.embed_aligned, verifier.templates)
    path = tmp_path_factory.mktemp("calibrated") / "model.pt"
    shutil.copy(BUNDLED, path)
    thresholds = {**verifier.metadata.thresholds,
                  ALL_PAIRS_ROC: {"points": roc_table(genuine, impostor), "source": "test"}}
    set_thresholds(path, thresholds)
    return path


@pytest.mark.slow  # its fixture embeds 240 photos on the torch path: runs in the full suite
def test_gallery_threshold_follows_its_size(calibrated_model, tmp_path):
    from faceverify import Verifier
    from faceverify.gallery import Gallery

    from .conftest import lfw

    verifier = Verifier(calibrated_model, device="cpu")
    with Gallery(tmp_path / "g.db", verifier) as gallery:
        one = gallery.operating_point()
        gallery.enroll("Aaron", [lfw("Aaron_Peirsol", 1)])
        gallery.enroll("Abdullah", [lfw("Abdullah_Gul", 1)])
        gallery.enroll("Alicia", [lfw("Alicia_Silverstone", 1)])
        three = gallery.operating_point()
        assert three.identities == 3 and three.threshold >= one.threshold
        assert three.fpir <= 0.01 + 1e-9 and "target FPIR 0.01" in three.rule
        (answer,) = gallery.identify([lfw("Aaron_Peirsol", 2)])
        assert answer.operating_point == three and answer.threshold == three.threshold
    with Gallery(tmp_path / "g.db", verifier, threshold=0.5) as pinned:  # this session only
        assert pinned.operating_point().threshold == 0.5 and pinned.operating_point().rule == "pinned"
    with Gallery(tmp_path / "g.db", verifier) as again:
        assert again.operating_point() == three
