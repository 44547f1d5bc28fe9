"""The web UI, running for real: driven through gradio_client and through headless Chromium."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import BUNDLED_ONNX, ROOT, lfw

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(str):
    """The UI's URL, with its process and console log."""

    proc: subprocess.Popen
    log: "os.PathLike"

    def peak_rss_mb(self) -> float:
        status = open(f"/proc/{self.proc.pid}/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024


def start_ui(folder: Path, *options: str) -> Server:
    """`faceverify serve` on a free port with a gallery in `folder`, once its page answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = folder / "console.log"
    proc = subprocess.Popen([sys.executable, "-m", "faceverify.cli", "serve", "--port", str(port),
                             "--gallery", str(folder / "gallery.db"), "--model", str(BUNDLED_ONNX), *options],
                            cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()[-3000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("server did not start in 180 s")
    server = Server(url)
    server.proc, server.log, server.gallery = proc, log, folder / "gallery.db"
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_ui(tmp_path_factory.mktemp("ui"))
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_binds_to_loopback_only(server):
    assert server.startswith("http://127.0.0.1:")


def test_verify_same_and_different(client):
    from gradio_client import handle_file

    from faceverify.runtime import OnnxEmbedder

    calibrated = OnnxEmbedder(BUNDLED_ONNX).metadata.threshold()
    same = client.predict(handle_file(str(lfw("Abdullah_Gul", 1))), handle_file(str(lfw("Abdullah_Gul", 3))),
                          calibrated, 1, 1, api_name="/verify")
    assert "Same person" in same[0]
    threshold = float(same[0].split("threshold ")[1].split(" ")[0])
    different = client.predict(handle_file(str(lfw("Abdullah_Gul", 1))),
                               handle_file(str(lfw("Alicia_Silverstone", 1))), threshold, 1, 1,
                               api_name="/verify")
    assert "Different people" in different[0]


def huge_image(path, size, mode="RGB"):
    from PIL import Image

    Image.new(mode, size, 128).save(path)
    return path


@pytest.mark.parametrize("make_bad,message", [
    (lambda d: huge_image(d / "wall.png", (200, 200)), "No face found"),
    (lambda d: (d / "notes.jpg").write_text("hello") and d / "notes.jpg", "^notes.jpg: not a readable image"),
    (lambda d: huge_image(d / "big.jpg", (12000, 12000)), "^big.jpg: 12000x12000 is 144.0 MP, over the 40 MP limit"),
    (lambda d: huge_image(d / "huge.png", (20000, 20000), "L"), "^huge.png: 400.0 MP, over the 40 MP limit"),
], ids=["no-face", "text-file", "144MP-jpeg", "400MP-png"])
def test_bad_input_gets_the_library_message_and_memory_stays_bounded(server, client, tmp_path, make_bad, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = make_bad(tmp_path)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(bad)), handle_file(str(lfw("Abdullah_Gul", 1))), 0.3, 1, 1,
                       api_name="/verify")
    assert server.peak_rss_mb() < 1024  # nothing decoded the huge images before the check
    assert "Traceback" not in server.log.read_text()  # a user's mistake is not a server fault


def test_identical_requests_from_concurrent_clients(server):
    """32 verify calls from 8 clients at once, all with the same photos: identical result images
    used to be rewritten in place while another request streamed them."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    def calls(_):
        client = Client(server, verbose=False)
        return [client.predict(handle_file(str(lfw("Abdullah_Gul", 1))), handle_file(str(lfw("Abdullah_Gul", 3))),
                               0.3, 1, 1, api_name="/verify") for _ in range(4)]

    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(calls, range(8)) for a in batch]
    assert len(answers) == 32 and all(a[0].startswith("## Same person") for a in answers)
    assert all(os.path.getsize(path) > 1000 for a in answers for path in a[1:])
    assert "Traceback" not in server.log.read_text() and "LocalProtocolError" not in server.log.read_text()


def test_app_decides_through_the_library(verifier, tmp_path):
    from faceverify_app.main import FaceApp, OutputFiles

    app = FaceApp(verifier, tmp_path / "g.db", OutputFiles(tmp_path))
    a, b = str(lfw("Abdullah_Gul", 1)), str(lfw("Alicia_Silverstone", 1))
    verdict, shown_a, _, crops = app.verify(a, b, verifier.threshold(), 1, 1)
    expected = verifier.verify(a, b)
    assert f"**{expected.score:.3f}**" in verdict and verdict.startswith("## Different people") != expected.same
    from faceverify import load_rgb

    assert load_rgb(crops).shape == (224, 2 * 224 + 8, 3)  # both crops whole, enlarged
    assert load_rgb(shown_a).shape == load_rgb(a).shape


def test_rejected_uploads_are_not_kept(verifier, tmp_path):
    """The UI keeps a copy of each enrolled upload (for upgrades); a photo the gallery rejects
    leaves no copy behind, except a duplicate, whose copy is the enrolled image's own source."""
    import cv2
    import numpy as np

    from faceverify_app.main import FaceApp, OutputFiles

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    app = FaceApp(verifier, tmp_path / "g.db", OutputFiles(tmp_path))
    photos = [str(lfw("Aaron_Peirsol", i)) for i in (1, 2)]
    summary, rows, _ = app.enroll("Aaron Peirsol", photos + [str(blank)])
    assert summary.startswith("2 photo(s) added") and [r[1] for r in rows] == ["added", "added", "rejected"]
    folder = tmp_path / "g.db.photos"
    assert sorted(p.read_bytes() for p in folder.iterdir()) == sorted(Path(p).read_bytes() for p in photos)

    summary, rows, _ = app.enroll("Someone Else", [photos[0], str(blank)])  # a duplicate and no face
    assert summary.startswith("0 photo(s) added") and "duplicate" in rows[0][2]
    assert len(list(folder.iterdir())) == 2  # the duplicate's copy is the enrolled one: still there


def test_enroll_then_identify(client):
    from gradio_client import handle_file

    summary, feedback, people = client.predict(
        "Abdullah Gul", [handle_file(str(lfw("Abdullah_Gul", i))) for i in (1, 2, 3)], api_name="/enroll")
    assert "3 photo(s) added" in summary, feedback
    client.predict("Aaron Peirsol", [handle_file(str(lfw("Aaron_Peirsol", i))) for i in (1, 2)],
                   api_name="/enroll")
    headline, matches = client.predict(handle_file(str(lfw("Abdullah_Gul", 5))), 3, api_name="/identify")
    assert headline.startswith("## Abdullah Gul") and len(matches) == 2


def test_enrolled_photos_are_kept_for_upgrades(client, server):
    """Gradio deletes uploads: the UI keeps each enrolled photo beside the gallery and records
    that copy as the source, so `faceverify gallery upgrade` can re-embed it later; the copies
    leave with their person."""
    import sqlite3

    from gradio_client import handle_file

    photos = [lfw("Aaron_Peirsol", i) for i in (3, 4)]
    summary, _, _ = client.predict("Aaron Peirsol 2", [handle_file(str(p)) for p in photos], api_name="/enroll")
    with sqlite3.connect(server.gallery) as db:
        sources = [row[0] for row in db.execute(
            "SELECT source FROM images JOIN identities ON identities.id = identity_id WHERE name = 'Aaron Peirsol 2'")]
    assert f"{len(sources)} photo(s) added" in summary and sources
    for source in sources:
        kept = Path(source)
        assert kept.parent == server.gallery.with_name("gallery.db.photos") and kept.is_file()
    assert {Path(s).read_bytes() for s in sources} <= {p.read_bytes() for p in photos}
    client.predict("Aaron Peirsol 2", api_name="/remove")
    with sqlite3.connect(server.gallery) as db:
        assert not db.execute("SELECT 1 FROM identities WHERE name = 'Aaron Peirsol 2'").fetchall()
    assert not any(Path(s).exists() for s in sources)  # the person's kept photos leave with them
    assert all(p.is_file() for p in photos)  # the user's own files are never touched


@contextmanager
def browser_page(url: str, height: int):
    """A page of headless Chromium at `url`."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": height})
        page.goto(url)
        yield page
        browser.close()


def verify_same_person(page) -> None:
    """Two photos of one man into the Verify tab; wait for its verdict."""
    inputs = page.locator("input[type=file]")
    inputs.nth(0).wait_for(state="attached", timeout=60_000)
    inputs.nth(0).set_input_files(str(lfw("Abdullah_Gul", 1)))
    inputs.nth(1).set_input_files(str(lfw("Abdullah_Gul", 3)))
    page.wait_for_timeout(1500)
    page.locator("#verify-button").click()
    page.locator("#verdict").get_by_text("Same person").wait_for(timeout=120_000)


needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="Debian chromium is not installed (make test installs it as root)")


@needs_chromium
def test_browser_verify_and_screenshot(server):
    with browser_page(server, 1400) as page:
        verify_same_person(page)
        page.screenshot(path=str(ARTIFACTS / "ui-verify.png"), full_page=True)
        for tab in ("Identify", "Enroll", "About"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(800)
            page.screenshot(path=str(ARTIFACTS / f"ui-{tab.lower()}.png"), full_page=True)
    assert (ARTIFACTS / "ui-verify.png").stat().st_size > 10_000


@pytest.mark.parametrize("exposure", [("--host", "0.0.0.0"), ("--host", "192.0.2.1"), ("--share",)])
def test_a_public_host_or_a_share_link_needs_a_login(tmp_path, exposure):
    done = subprocess.run([sys.executable, "-m", "faceverify.cli", "serve", *exposure, "--gallery",
                           str(tmp_path / "g.db")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "without a login" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "g.db").exists()


PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The UI on every interface, behind a login (alice)."""
    folder = tmp_path_factory.mktemp("ui-login")
    users = folder / "users.json"
    subprocess.run([sys.executable, "-m", "faceverify.cli", "users", "add", "alice", "--auth-file", str(users),
                    "--password-stdin"], input=PASSWORD + "\n", cwd=ROOT, check=True, capture_output=True, text=True)
    server = start_ui(folder, "--host", "0.0.0.0", "--auth-file", str(users))
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=30)


def test_with_a_login_every_endpoint_asks_for_it_and_changes_are_credited(guarded):
    import json

    from gradio_client import Client, handle_file

    for path in ("config", "gradio_api/info"):
        try:
            with urllib.request.urlopen(guarded + path, timeout=10) as answer:
                body = answer.read().decode()
            assert '"components"' not in body and '"named_endpoints"' not in body, path
        except urllib.error.HTTPError as exc:
            assert exc.code in (401, 403), path
    with pytest.raises(Exception):
        Client(guarded, verbose=False).predict("Intruder", [handle_file(str(lfw("Aaron_Peirsol", 1)))],
                                               api_name="/enroll")
    with pytest.raises(Exception):
        Client(guarded, auth=("alice", "not the password"), verbose=False)
    client = Client(guarded, auth=("alice", PASSWORD), verbose=False)
    summary, _, _ = client.predict("Aaron Peirsol", [handle_file(str(lfw("Aaron_Peirsol", i))) for i in (1, 2)],
                                   api_name="/enroll")
    assert "2 photo(s) added" in summary
    done = subprocess.run([sys.executable, "-m", "faceverify.cli", "gallery", "audit", "--json", "--gallery",
                           str(guarded.gallery)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["actor"], x["action"], x["subject"]) for x in lines] == [("ui:alice", "enrol", "Aaron Peirsol")]


@needs_chromium
def test_browser_logs_in_then_verifies(guarded):
    with browser_page(guarded, 900) as page:
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("wrong password!")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=30_000)
        page.get_by_label("username").fill("alice")  # the form starts afresh
        page.get_by_label("password").fill(PASSWORD)
        page.screenshot(path=str(ARTIFACTS / "ui-login.png"))
        page.get_by_role("button", name="Login").click()
        verify_same_person(page)
