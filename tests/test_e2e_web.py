"""The browser page (`faceverify export --web`), for real: exported into a folder, served by a local
static server, driven by headless Chromium; onnxruntime-web is the pinned npm package (`make js`)."""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from faceverify.e2e.model import CENTRAL
from faceverify.e2e.web import CHECKOUT_RUNTIME, MODEL_FILE, ORT_WEB_VERSION, export_web
from faceverify.errors import ModelError

from .conftest import BUNDLED_ONNX, DEV_PAIRS, LFW, ROOT
from .test_app import CHROMIUM

NODE_TOOLS = shutil.which("npm") and shutil.which("node")
needs_browser = pytest.mark.skipif(not (Path(CHROMIUM).exists() and NODE_TOOLS),
                                   reason="needs Debian chromium (make browser) and npm (for onnxruntime-web)")


@pytest.mark.data_free
def test_the_page_runtime_is_the_pinned_registry_package():
    package = json.loads((ROOT / "web" / "package.json").read_text())
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    assert package["private"] and package["dependencies"] == {"onnxruntime-web": ORT_WEB_VERSION}
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == ORT_WEB_VERSION


@pytest.mark.data_free
def test_without_the_runtime_export_says_how_to_install_it(tmp_path):
    with pytest.raises(ModelError, match="make js"):
        export_web(tmp_path / "site", runtime=tmp_path / "nothing")
    done = subprocess.run([sys.executable, "-m", "faceverify.cli", "export", "--web", str(tmp_path / "site"),
                           "--ort-web", str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "npm install onnxruntime-web@" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "site").exists()


class Site(str):
    """The page's URL, with every request its server answered (method, path, body length)."""

    folder: Path
    served: list


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`export_web` into a folder served on the loopback interface by http.server."""
    if not CHECKOUT_RUNTIME.is_dir():
        pytest.fail("onnxruntime-web is not installed: run `make js`")
    folder = tmp_path_factory.mktemp("site")
    export_web(folder)
    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            served.append((self.command, self.path, self.headers.get("Content-Length")))

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = Site(f"http://127.0.0.1:{httpd.server_address[1]}/")
    url.folder, url.served = folder, served
    yield url
    httpd.shutdown()
    httpd.server_close()


def wait_for(page, expression: str, timeout: float = 120) -> None:
    """Poll `expression` in the page (evaluated through the DevTools protocol: the page's CSP
    forbids the eval that Playwright's wait_for_function uses)."""
    end = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < end, f"timed out waiting for {expression}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def page(site):
    """The page in headless Chromium, its model loaded; `page.requests` and `page.problems` record
    every request it made and every script error, crash or console error."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.requests, page.problems = [], []
        page.on("request", lambda request: page.requests.append(request))
        page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
        page.on("crash", lambda _: page.problems.append("crash"))
        page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
        page.goto(site)
        wait_for(page, "window.faceverifyReady !== undefined")
        assert page.evaluate("window.faceverifyReady"), page.inner_text("#status")
        yield page
        browser.close()


def verify(page, first: Path, second: Path) -> dict:
    """Both photos chosen in the page; its result once it is about them."""
    inputs = page.locator("input[type=file]")
    inputs.nth(0).set_input_files(str(first))
    inputs.nth(1).set_input_files(str(second))
    wait_for(page, f"window.faceverifyResult && window.faceverifyResult.names.join('/') === "
                   f"{json.dumps(first.name + '/' + second.name)}")
    return page.evaluate("window.faceverifyResult")


def drawn_faces(page) -> list[float]:
    """The standard deviation of each photo's aligned-face canvas (0: blank)."""
    return page.evaluate("""[...document.querySelectorAll('.photo canvas')].map((canvas) => {
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let sum = 0, squares = 0;
        for (const v of data) { sum += v; squares += v * v; }
        const mean = sum / data.length;
        return Math.sqrt(squares / data.length - mean * mean);
    })""")


@pytest.fixture(scope="module")
def library():
    from faceverify import Verifier

    return Verifier(BUNDLED_ONNX, face_policy="central")


@pytest.fixture(scope="module")
def same_file(site):
    """The page's model file run by onnxruntime in Python on the library's decoding of a photo."""
    import onnxruntime as ort

    from faceverify import load_rgb

    session = ort.InferenceSession(str(site.folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    return lambda path: session.run(["embedding"], {"image": load_rgb(path), "face_policy": np.array([CENTRAL])})[0]


def pair_decided_right(library, same: bool):
    """The first LFW dev pair of this kind that the library decides right with a margin."""
    from faceverify.data import read_pairs

    threshold = library.threshold()
    for pair in read_pairs(DEV_PAIRS, LFW):
        if pair.same == same:
            score = float(np.dot(*library.embed([pair.left, pair.right])))
            if (score - threshold if same else threshold - score) > 0.05:
                return pair.left, pair.right, score


@pytest.mark.slow
@needs_browser
def test_the_page_verifies_two_photos_in_the_browser_and_sends_none(site, page, library, same_file, capsys):
    loaded = len(page.requests)
    differences = []
    for same in (True, False):
        first, second, expected = pair_decided_right(library, same)
        result = verify(page, first, second)
        differences.append(abs(result["score"] - expected))
        assert result["error"] is None and result["same"] is same, result
        assert [face["found"] for face in result["faces"]] == [1, 1]
        # the page's decoding and wasm: as Python's on the same file (3e-5 measured); its fp16
        # weights: near the library's fp32 model (8e-4 at most on 10 dev pairs, bench/bench_web.py)
        assert abs(result["score"] - float(same_file(first) @ same_file(second))) < 2e-4
        assert abs(result["score"] - expected) < 2e-3, (result["score"], expected)
        assert min(drawn_faces(page)) > 10  # both aligned faces shown
        assert page.inner_text("#decision") == ("Same person" if same else "Different people")
        assert f"{result['score']:.3f}" in page.inner_text("#score")
    runs = [page.evaluate("window.faceverifyVerify().then((r) => [r.ms, r.modelMs])") for _ in range(3)]
    # choosing and verifying photos made no request at all; loading the page only fetched its own files
    assert page.requests[loaded:] == []
    for request in page.requests:
        assert request.method == "GET" and request.url.startswith(site) and request.post_data_buffer is None
    assert all(method == "GET" and length is None for method, _, length in site.served)
    assert {path for _, path, _ in site.served} <= {"/"} | {f"/{p.relative_to(site.folder).as_posix()}"
                                                        for p in site.folder.rglob("*") if p.is_file()}
    assert page.problems == []
    with capsys.disabled():
        ms, model_ms = (statistics.median(r[i] for r in runs) for i in (0, 1))
        print(f"\nbrowser (wasm, {result['threads']} thread): one verification {ms:.0f} ms (model {model_ms:.0f} ms), "
              f"median of 3; score vs the library's: {max(differences):.1e} at most")


@pytest.mark.slow
@needs_browser
def test_bad_photos_give_a_clear_message_never_a_crash(tmp_path, page):
    from PIL import Image

    blank, notes, huge = tmp_path / "blank.png", tmp_path / "notes.jpg", tmp_path / "huge.png"
    Image.new("RGB", (640, 480), (128, 128, 128)).save(blank)
    notes.write_text("not a photo")
    Image.new("1", (8000, 6000)).save(huge)  # 48 MP: over the 40 MP limit, a 6-kB file
    face = LFW / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    loaded = len(page.requests)

    result = verify(page, blank, face)
    assert result["error"] == "No face found in photo 1." and [f["found"] for f in result["faces"]] == [0, 1]
    assert result["same"] is None and page.inner_text("#status") == "No face found in photo 1."
    assert page.inner_text("#photo-1 .faces") == "No face found" and drawn_faces(page)[0] == 0
    result = verify(page, face, notes)
    assert result["error"] == "Photo 2 (notes.jpg) is not an image this browser can decode." and result["faces"] == []
    result = verify(page, huge, face)
    assert result["error"].startswith("Photo 1 (huge.png) is 8000 × 6000 = 48.0 megapixels, over the 40-megapixel limit")
    assert result["faces"] == []  # refused before the model ran
    assert verify(page, face, LFW / "Abdullah_Gul" / "Abdullah_Gul_0003.jpg")["same"] is True  # the page still works
    assert page.problems == [] and page.requests[loaded:] == []
