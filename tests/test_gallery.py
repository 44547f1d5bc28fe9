"""Gallery on real faces: enroll LFW identities, identify held-out photos, reject strangers; durable
under SIGKILL and concurrent writers; clear errors for foreign files."""
import json
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from faceverify.errors import GalleryBusyError, GalleryError, ModelMismatchError
from faceverify.gallery import FaissIndex, Gallery, NumpyIndex

from .conftest import BUNDLED, DATA, LFW, ROOT


@pytest.fixture(scope="module")
def lfw_split():
    """Train-split identities with ≥ 4 photos: 3 enrolled, the rest held out; plus strangers."""
    import csv

    by_name = defaultdict(list)
    with open(DATA / "lfw" / "manifest.csv") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "train":
                by_name[row["identity"]].append(DATA / "lfw" / row["path"])
    known = [n for n in sorted(by_name) if len(by_name[n]) >= 4][:12]
    strangers = [n for n in sorted(by_name) if len(by_name[n]) == 1][:12]
    enrolled = {n: by_name[n][:3] for n in known}
    held_out = [(n, p) for n in known for p in by_name[n][3:5]]
    return enrolled, held_out, [by_name[n][0] for n in strangers]


@pytest.fixture(scope="module")
def verifier():
    """LFW photos often show bystanders: pick the central face, as the dataset intends."""
    from faceverify import Verifier

    return Verifier(BUNDLED, device="cpu", face_policy="central")


@pytest.fixture(scope="module")
def gallery_path(tmp_path_factory, verifier, lfw_split):
    path = tmp_path_factory.mktemp("gallery") / "g.db"
    with Gallery(path, verifier) as gallery:
        for name, photos in lfw_split[0].items():
            report = gallery.enroll(name, photos)
            assert report.added, report.rejected
    return path


def test_identify_held_out_and_reject_strangers(gallery_path, verifier, lfw_split):
    enrolled, held_out, strangers = lfw_split
    with Gallery(gallery_path, verifier) as gallery:
        results = gallery.identify([p for _, p in held_out])
        assert not [r for r in results if isinstance(r, Exception)]
        rank1 = np.mean([r.matches[0][0] == name for (name, _), r in zip(held_out, results)])
        accepted = np.mean([r.name == name for (name, _), r in zip(held_out, results)])
        unknown = gallery.identify(strangers)
        false_accepts = np.mean([r.name is not None for r in unknown if not isinstance(r, Exception)])
    print(f"\n{len(held_out)} held-out photos of {len(enrolled)} people: rank-1 {rank1:.3f}, accepted at "
          f"the gallery threshold {accepted:.3f}; {len(strangers)} strangers: false-accept {false_accepts:.3f}")
    assert rank1 >= 0.9 and accepted >= 0.7 and false_accepts <= 0.1


def test_quality_gate_and_duplicates(gallery_path, verifier, lfw_split, tmp_path):
    import cv2

    name, photos = next(iter(lfw_split[0].items()))
    blurry = cv2.GaussianBlur(cv2.imread(str(LFW.parent / "images" / photos[0].parent.name / photos[0].name)), (0, 0), 6)
    cv2.imwrite(str(tmp_path / "blurry.png"), blurry)
    with Gallery(gallery_path, verifier) as gallery:
        report = gallery.enroll(name, [photos[0], tmp_path / "blurry.png"])
    reasons = dict(report.rejected)
    assert not report.added
    assert "duplicate" in reasons[str(photos[0])] and "blurry" in reasons[str(tmp_path / "blurry.png")]


def test_management_and_export_import(gallery_path, verifier, tmp_path):
    copy = tmp_path / "copy.db"
    with Gallery(gallery_path, verifier) as gallery:
        names = [n for n, _, _ in gallery.identities()]
        exported = gallery.export(tmp_path / "backup.npz")
    with Gallery(copy, verifier) as other:
        assert other.import_(tmp_path / "backup.npz", progress=False) == exported
        other.rename(names[0], "Renamed Person")
        first_image = other.show("Renamed Person")[0]["id"]
        other.remove_image(first_image)
        other.remove(names[1])
        listed = {n: k for n, k, _ in other.identities()}
    assert "Renamed Person" in listed and names[1] not in listed and len(listed) == len(names) - 1
    with pytest.raises(GalleryError, match="no identity named"):
        Gallery(copy, verifier).remove("nobody")


def test_foreign_and_corrupt_files(tmp_path, verifier):
    (tmp_path / "junk.db").write_bytes(b"\x00" * 100 + b"not sqlite at all" * 50)
    with pytest.raises(GalleryError, match="not a readable gallery"):
        Gallery(tmp_path / "junk.db", verifier)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(GalleryError, match="not a faceverify gallery"):
        Gallery(tmp_path / "other.db", verifier)
    with pytest.raises(GalleryError, match="no such gallery"):
        Gallery(tmp_path / "absent.db", verifier, create=False)


def test_other_model_is_refused(gallery_path, untrained_checkpoint):
    from faceverify import Verifier

    with pytest.raises(ModelMismatchError, match="re-embed"):
        Gallery(gallery_path, Verifier(untrained_checkpoint, device="cpu"))


ENROLL_SCRIPT = """
import sys, time
from faceverify import Verifier
from faceverify.gallery import Gallery
from faceverify.gallery.store import GalleryStore
slow = GalleryStore._refresh_template
def slow_refresh(self, identity):  # hold the write transaction open long enough to be killed in it
    print("in-transaction", flush=True)
    time.sleep(float(sys.argv[3]))
    slow(self, identity)
GalleryStore._refresh_template = slow_refresh
g = Gallery(sys.argv[1], Verifier(sys.argv[2], device="cpu"), busy_timeout_s=float(sys.argv[4]))
report = g.enroll(sys.argv[5], sys.argv[6:])
print("done", len(report.added), flush=True)
"""


def start_enroll(gallery, name, photos, hold_s, busy_s):
    return subprocess.Popen([sys.executable, "-c", ENROLL_SCRIPT, str(gallery), str(BUNDLED), str(hold_s),
                             str(busy_s), name, *map(str, photos)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc, word, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if word in line:
            return line
    raise AssertionError(f"never saw {word!r}: {proc.stderr.read()[-2000:]}")


def test_sigkill_mid_enrollment_leaves_no_partial_identity(gallery_path, verifier, lfw_split, tmp_path):
    target = tmp_path / "killed.db"
    target.write_bytes(gallery_path.read_bytes())
    _, held_out, _ = lfw_split
    proc = start_enroll(target, "Half Written", [p for _, p in held_out[:3]], 60, 10)
    wait_for(proc, "in-transaction")
    proc.kill()
    proc.wait()
    with Gallery(target, verifier) as gallery:
        names = [n for n, _, _ in gallery.identities()]
        assert "Half Written" not in names
        assert gallery.store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert gallery.store.db.execute(
            "SELECT COUNT(*) FROM images WHERE identity_id NOT IN (SELECT id FROM identities)").fetchone()[0] == 0


def test_two_writers(gallery_path, lfw_split, tmp_path):
    target = tmp_path / "busy.db"
    target.write_bytes(gallery_path.read_bytes())
    photos = [p for _, p in lfw_split[1][:4]]
    first = start_enroll(target, "Writer One", photos[:2], 25, 30)
    wait_for(first, "in-transaction")
    patient = start_enroll(target, "Writer Two", photos[2:], 0, 60)   # waits for the lock, then writes
    impatient = start_enroll(target, "Writer Three", photos[2:3], 0, 0.5)  # gives up: clear busy error
    outputs = [p.communicate(timeout=300) for p in (first, patient, impatient)]
    assert first.returncode == 0 and patient.returncode == 0, outputs
    assert impatient.returncode != 0 and "GalleryBusyError" in outputs[2][1]
    con = sqlite3.connect(target)
    names = {r[0] for r in con.execute("SELECT name FROM identities")}
    assert {"Writer One", "Writer Two"} <= names and "Writer Three" not in names


def test_numpy_and_faiss_search_agree(rng):
    templates = rng.normal(size=(2000, 64)).astype(np.float32)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    queries = templates[:50] + 0.05 * rng.normal(size=(50, 64)).astype(np.float32)
    (s1, i1), (s2, i2) = NumpyIndex(templates).search(queries, 5), FaissIndex(templates).search(queries, 5)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2, atol=1e-5)
    assert (i1[:, 0] == np.arange(50)).all()
