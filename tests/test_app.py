"""The web UI, running for real: driven through gradio_client and through headless Chromium."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import BUNDLED, ROOT, lfw

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    gallery = tmp_path_factory.mktemp("ui") / "gallery.db"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "faceverify.cli", "serve", "--port", str(port),
                             "--gallery", str(gallery), "--model", str(BUNDLED)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read()[-3000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("server did not start in 180 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_binds_to_loopback_only(server):
    assert server.startswith("http://127.0.0.1:")


def test_verify_same_and_different(client):
    from gradio_client import handle_file

    same = client.predict(handle_file(str(lfw("Abdullah_Gul", 1))), handle_file(str(lfw("Abdullah_Gul", 3))),
                          0.3, 1, 1, api_name="/verify")
    assert "Same person" in same[0]
    threshold = float(same[0].split("threshold ")[1].split(" ")[0])
    different = client.predict(handle_file(str(lfw("Abdullah_Gul", 1))),
                               handle_file(str(lfw("Alicia_Silverstone", 1))), threshold, 1, 1,
                               api_name="/verify")
    assert "Different people" in different[0]


def test_readable_error_for_bad_input(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    noface = tmp_path / "wall.png"
    from PIL import Image

    Image.new("RGB", (200, 200), (90, 90, 90)).save(noface)
    with pytest.raises(AppError, match="No face found"):
        client.predict(handle_file(str(noface)), handle_file(str(lfw("Abdullah_Gul", 1))), 0.3, 1, 1,
                       api_name="/verify")


def test_enroll_then_identify(client):
    from gradio_client import handle_file

    summary, feedback, people = client.predict(
        "Abdullah Gul", [handle_file(str(lfw("Abdullah_Gul", i))) for i in (1, 2, 3)], api_name="/enroll")
    assert "3 photo(s) added" in summary, feedback
    client.predict("Aaron Peirsol", [handle_file(str(lfw("Aaron_Peirsol", i))) for i in (1, 2)],
                   api_name="/enroll")
    headline, matches = client.predict(handle_file(str(lfw("Abdullah_Gul", 5))), 3, api_name="/identify")
    assert headline.startswith("## Abdullah Gul") and len(matches) == 2


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (make test installs it as root)")
def test_browser_verify_and_screenshot(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(server)
        inputs = page.locator("input[type=file]")
        inputs.nth(0).set_input_files(str(lfw("Abdullah_Gul", 1)))
        inputs.nth(1).set_input_files(str(lfw("Abdullah_Gul", 3)))
        page.wait_for_timeout(1500)
        page.locator("#verify-button").click()
        page.locator("#verdict").get_by_text("Same person").wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "ui-verify.png"), full_page=True)
        for tab in ("Identify", "Enroll", "About"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(800)
            page.screenshot(path=str(ARTIFACTS / f"ui-{tab.lower()}.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "ui-verify.png").stat().st_size > 10_000
