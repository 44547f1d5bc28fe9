"""`faceverify gallery upgrade` on both stores (a SQLite file and a throwaway PostgreSQL server, the
fixtures of test_gallery_stores): a gallery built by a previous model (a random 64-d one) is
re-embedded by the bundled model from the LFW photos it kept, person by person, resumably, and
switched in one transaction; missing photos stop it unless dropped."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceverify import ModelMismatchError, Verifier
from faceverify.cli import main
from faceverify.gallery import Gallery, GalleryStore, Identification, upgrade_gallery
from faceverify.gallery.postgres_store import PostgresStore
from faceverify.gallery.photos import default_threshold

from .conftest import BUNDLED, lfw
from .test_gallery_stores import location, postgres  # noqa: F401  (fixtures: each store, fresh)

PEOPLE = {"Aaron Peirsol": [lfw("Aaron_Peirsol", i) for i in (1, 2, 3)],
          "Abdullah Gul": [lfw("Abdullah_Gul", i) for i in (1, 2)],
          "Amelie Mauresmo": [lfw("Amelie_Mauresmo", i) for i in (1, 2, 3)],
          "Andre Agassi": [lfw("Andre_Agassi", i) for i in (1, 2)]}
HELD_OUT = {"Aaron Peirsol": lfw("Aaron_Peirsol", 4), "Abdullah Gul": lfw("Abdullah_Gul", 4),
            "Amelie Mauresmo": lfw("Amelie_Mauresmo", 4), "Andre Agassi": lfw("Andre_Agassi", 3)}
LATE = {"Alicia Silverstone": [lfw("Alicia_Silverstone", 1)]}  # enrolled in the middle of an upgrade


@pytest.fixture(scope="module")
def previous(untrained_checkpoint):
    """The model the galleries were built with."""
    return Verifier(untrained_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def new_embeddings(verifier):
    """What the new (bundled) model computes for each photo, by file name."""
    paths = [p for people in (PEOPLE, LATE) for photos in people.values() for p in photos]
    return {p.name: e for p, e in zip(paths, verifier.embed(paths))}


def enroll(location, model, people, **options):
    with Gallery(location, model, **options) as gallery:
        for name, photos in people.items():
            assert len(gallery.enroll(name, photos).added) == len(photos)
        return gallery.store.all_images()[1]


def embedding_columns(store):
    """PostgreSQL: the type and NOT NULL of images.embedding and templates.embedding, and whether
    the templates' HNSW index exists (SQLite: BLOBs, nothing to check)."""
    if not isinstance(store, PostgresStore):
        return None
    columns = store._execute("SELECT attrelid::regclass::text, format_type(atttypid, atttypmod), attnotnull "
                             "FROM pg_attribute WHERE attname = 'embedding' AND attrelid IN "
                             "('images'::regclass, 'templates'::regclass) ORDER BY 1").fetchall()
    hnsw = store._execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'templates_hnsw'").fetchall()
    return [tuple(c) for c in columns], [h[0].split(" USING ")[1] for h in hnsw]


def pg_columns(dim):
    columns = [("images", f"vector({dim})", True), ("templates", f"vector({dim})", True)]
    return columns, ["hnsw (embedding vector_ip_ops)"]


def check_upgraded(location, verifier, people, new_embeddings, target_fpir=None):
    """Every person kept with the same photos, embedded and templated by the new model, found again
    from a photo not enrolled; the meta names the new model."""
    with Gallery(location, verifier) as gallery:
        assert {n: k for n, k, _ in gallery.identities()} == {n: len(p) for n, p in people.items()}
        for name, photos in people.items():
            shown = gallery.show(name)
            assert [image["source"] for image in shown] == list(map(str, photos))
            assert all(0 <= image["quality"] <= 1 for image in shown)  # the new model's verdicts
            size = verifier.templates[0].size  # the new model's (first) alignment
            assert gallery.thumbnail(name).shape == (size, size, 3)
        rows, embeddings = gallery.store.all_images()
        expected = np.stack([new_embeddings[Path(row[1]).name] for row in rows])
        assert embeddings.shape == expected.shape == (len(rows), verifier.metadata.embedding_dim)
        assert np.abs(embeddings - expected).max() <= 1e-5
        names, templates = gallery.store.templates()
        for name, template in zip(names, templates):
            mean = np.mean([new_embeddings[p.name] for p in people[name]], axis=0)
            assert np.abs(template - mean / np.linalg.norm(mean)).max() <= 1e-5
        found = [n for n in people if n in HELD_OUT]
        assert [a.name for a in gallery.identify([HELD_OUT[n] for n in found])] == found
        assert gallery.store.threshold == default_threshold(verifier.metadata)
        assert gallery.store.target_fpir == target_fpir
        assert gallery.store.staged_model() is None
        assert embedding_columns(gallery.store) in (None, pg_columns(verifier.metadata.embedding_dim))
        return embeddings


def test_upgrade_re_embeds_every_person(location, previous, verifier, new_embeddings):
    enroll(location, previous, PEOPLE, target_fpir=0.01)
    with pytest.raises(ModelMismatchError, match="faceverify gallery upgrade"):
        Gallery(location, verifier)
    with Gallery(location, previous) as before:  # open in another process during the upgrade, say
        before.identify([HELD_OUT["Andre Agassi"]])
        report = upgrade_gallery(location, verifier, progress=False)
        with pytest.raises(ModelMismatchError, match="upgraded to model"):  # no old-model search after the switch
            before.identify([HELD_OUT["Andre Agassi"]])
        with pytest.raises(ModelMismatchError, match="upgraded to model"):  # nor old-model embeddings added
            before.enroll("Andre Agassi", [lfw("Andre_Agassi", 5)])
    assert report.upgraded and not report.problems and not report.dropped
    assert (report.people, report.images, report.embedded, report.reused) == (4, 10, 10, 0)
    model = verifier.metadata.weights_sha256[:12]
    assert report.summary().startswith(f"upgraded 4 people (10 images) to model {model}")
    embeddings = check_upgraded(location, verifier, PEOPLE, new_embeddings, target_fpir=0.01)
    with pytest.raises(ModelMismatchError):
        Gallery(location, previous)  # the old model is refused now
    again = upgrade_gallery(location, verifier, progress=False)  # a no-op
    assert again.already and not again.upgraded and again.embedded == 0 and "nothing to do" in again.summary()
    assert np.array_equal(check_upgraded(location, verifier, PEOPLE, new_embeddings, 0.01), embeddings)


def test_missing_photo_stops_before_the_switch_unless_dropped(location, previous, verifier, new_embeddings,
                                                               tmp_path, capsys):
    people = {}
    for name, photos in [*list(PEOPLE.items())[:3], *LATE.items()]:
        (tmp_path / name).mkdir()
        people[name] = [Path(shutil.copy(photo, tmp_path / name)) for photo in photos]
    old_embeddings = enroll(location, previous, people)
    gone, lonely = people["Abdullah Gul"].pop(1), people.pop("Alicia Silverstone")[0]
    gone.unlink()
    lonely.unlink()
    changed = people["Amelie Mauresmo"].pop(2)
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)  # another photo now
    cli = ["gallery", "upgrade", "--gallery", location, "--model", str(BUNDLED), "--device", "cpu", "--quiet"]
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert f"cannot re-embed {gone} (Abdullah Gul): source photo not found" in err
    assert f"cannot re-embed {lonely} (Alicia Silverstone): source photo not found" in err
    assert f"cannot re-embed {changed} (Amelie Mauresmo): changed since it was enrolled" in err
    assert err.strip().splitlines()[-1].startswith("faceverify: error: 3 images could not be re-embedded")
    with Gallery(location, previous) as gallery:  # still the old model's, untouched
        assert {n: k for n, k, _ in gallery.identities()} == {"Aaron Peirsol": 3, "Abdullah Gul": 2,
                                                               "Amelie Mauresmo": 3, "Alicia Silverstone": 1}
        assert np.array_equal(gallery.store.all_images()[1], old_embeddings)
        assert all(isinstance(a, Identification) for a in gallery.identify([HELD_OUT["Aaron Peirsol"]]))
        assert gallery.store.staged_model() == (verifier.fingerprint, verifier.metadata.embedding_dim)
    assert main([*cli, "--drop-missing", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["upgraded"] and report["reused"] == 6 and report["embedded"] == 0  # staged by the first run
    assert [(d["person"], d["source"]) for d in report["dropped"]] == [
        ("Abdullah Gul", str(gone)), ("Alicia Silverstone", str(lonely)), ("Amelie Mauresmo", str(changed))]
    assert report["removed_people"] == ["Alicia Silverstone"]
    assert "upgraded 3 people (6 images)" in captured.err and "3 images dropped" in captured.err
    check_upgraded(location, verifier, people, new_embeddings)


def test_interrupted_upgrade_leaves_the_old_gallery_and_resumes(location, previous, verifier, new_embeddings,
                                                                monkeypatch):
    enroll(location, previous, PEOPLE)
    analyze, calls = verifier.analyze, []

    def crash_on_second_person(*args, **kwargs):  # a kill after the first person was staged
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return analyze(*args, **kwargs)

    monkeypatch.setattr(verifier, "analyze", crash_on_second_person)
    with pytest.raises(RuntimeError, match="simulated crash"):
        upgrade_gallery(location, verifier, progress=False, batch_images=1)  # a person at a time
    monkeypatch.undo()
    first = sorted(PEOPLE)[0]
    with Gallery(location, previous) as gallery:  # still works with the old model, and takes new people
        assert gallery.store._execute("SELECT COUNT(*) FROM upgrade_images").fetchone()[0] == len(PEOPLE[first])
        assert [a.matches[0][0] for a in gallery.identify(PEOPLE[first][:1])] == [first]
        assert gallery.store.all_images()[1].shape == (10, 64)
        enroll(location, previous, LATE)
    with monkeypatch.context() as patch:  # a crash inside the switch: all of it rolled back
        patch.setattr(GalleryStore, "_rebuild_templates", lambda store: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            upgrade_gallery(location, verifier, progress=False)
    with Gallery(location, previous) as gallery:
        assert embedding_columns(gallery.store) in (None, pg_columns(64))
        assert gallery.store.all_images()[1].shape == (11, 64) and gallery.store.templates()[1].shape == (5, 64)
        assert [a.matches[0][0] for a in gallery.identify(LATE["Alicia Silverstone"])] == ["Alicia Silverstone"]
    report = upgrade_gallery(location, verifier, progress=False)
    assert report.upgraded and report.reused == 11 and report.embedded == 0
    check_upgraded(location, verifier, {**PEOPLE, **LATE}, new_embeddings)


def test_a_gallery_made_with_mtcnn_landmarks_is_upgraded_to_the_models_detector(location, verifier, capsys):
    """Same weights, another detector: the documented command re-embeds every person with the
    landmarks the model now names."""
    assert verifier.detector_name != "mtcnn"  # the bundled model names another detector now
    with_mtcnn = Verifier(BUNDLED, device="cpu", detector="mtcnn")
    before = enroll(location, with_mtcnn, PEOPLE)
    with pytest.raises(ModelMismatchError, match=r"\(mtcnn landmarks\), not .*\(%s landmarks\)" % verifier.detector_name):
        Gallery(location, verifier)
    assert main(["gallery", "upgrade", "--gallery", location, "--model", str(BUNDLED), "--device", "cpu",
                 "--quiet"]) == 0
    assert f"({verifier.detector_name} landmarks)" in capsys.readouterr().err
    with Gallery(location, verifier) as gallery:
        assert gallery.store.meta["weights_sha256"] == verifier.fingerprint
        assert {n: k for n, k, _ in gallery.identities()} == {n: len(p) for n, p in PEOPLE.items()}
        after = gallery.store.all_images()[1]
        assert after.shape == before.shape and not np.allclose(after, before)  # re-aligned, re-embedded
        assert [a.name for a in gallery.identify(list(HELD_OUT.values()))] == list(HELD_OUT)
    with pytest.raises(ModelMismatchError):
        Gallery(location, with_mtcnn)
