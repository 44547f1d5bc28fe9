"""The browser page (`faceverify export --web`) against onnxruntime in Python, one run: the time of
one verification (two photos decoded and run through the same end-to-end file, the cosine) in
headless Chromium on onnxruntime-web's wasm backend, from a plain static server (one thread) and
from one that makes the page cross-origin isolated (a wasm thread per core), beside
onnxruntime-python with as many threads on the same photos; and how far the page's scores are
from Python's on the same file and from the library's.

    python bench/bench_web.py [--pairs 10] [--runs 5]

Needs Chromium (/usr/bin/chromium, `make browser`) and onnxruntime-web (`make js`).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common import LFW, ROOT, table
from faceverify import Verifier, load_rgb
from faceverify.data import read_pairs
from faceverify.e2e.model import CENTRAL
from faceverify.e2e.web import MODEL_FILE, export_web

DEV_PAIRS = LFW.parent / "pairs_dev.txt"
CHROMIUM = "/usr/bin/chromium"
ISOLATED = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def serve(folder: Path, headers: dict) -> http.server.ThreadingHTTPServer:
    """`folder` on a free loopback port, each answer with `headers`."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self):
            for name, value in headers.items():
                self.send_header(name, value)
            super().end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def page_times(browser, url: str, pairs, runs: int) -> tuple[list, list, list, int]:
    """Per pair: the page's median ms of a verification and of its model runs over `runs`
    repeats (after one warm-up), and its score; the page's wasm thread count."""
    page = browser.new_page()
    page.goto(url)
    deadline = time.monotonic() + 300
    while page.evaluate("window.faceverifyReady") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not page.evaluate("window.faceverifyReady"):
        raise SystemExit(f"the page did not load its model: {page.inner_text('#status')}")
    inputs = page.locator("input[type=file]")
    whole, model, scores = [], [], []
    for pair in pairs:
        inputs.nth(0).set_input_files(str(pair.left))
        inputs.nth(1).set_input_files(str(pair.right))
        names = json.dumps(f"{pair.left.name}/{pair.right.name}")
        while not page.evaluate(f"window.faceverifyResult?.names.join('/') === {names}"):
            time.sleep(0.05)
        results = [page.evaluate("window.faceverifyVerify()") for _ in range(runs)]
        whole.append(statistics.median(r["ms"] for r in results))
        model.append(statistics.median(r["modelMs"] for r in results))
        scores.append(results[0]["score"])
    threads = page.evaluate("window.faceverifyResult.threads")
    page.close()
    return whole, model, scores, threads


def python_times(model: Path, pairs, runs: int, threads: int) -> tuple[list, list, list]:
    """The same per pair with onnxruntime in Python (photos decoded by the library's load_rgb)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    policy = np.array([CENTRAL], np.int64)

    def verification(pair):
        start = time.perf_counter()
        photos = [load_rgb(pair.left), load_rgb(pair.right)]
        decoded = time.perf_counter()
        a, b = (session.run(["embedding"], {"image": photo, "face_policy": policy})[0] for photo in photos)
        end = time.perf_counter()
        return 1000 * (end - start), 1000 * (end - decoded), float(a @ b)

    whole, model_ms, scores = [], [], []
    for pair in pairs:
        verification(pair)  # warm-up
        results = [verification(pair) for _ in range(runs)]
        whole.append(statistics.median(r[0] for r in results))
        model_ms.append(statistics.median(r[1] for r in results))
        scores.append(results[0][2])
    return whole, model_ms, scores


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="LFW dev pairs, spread over the file")
    parser.add_argument("--runs", type=int, default=5, help="timed verifications of each pair (after a warm-up)")
    args = parser.parse_args()
    every = read_pairs(DEV_PAIRS, LFW)
    pairs = every[::max(1, len(every) // args.pairs)][:args.pairs]
    site = Path(tempfile.mkdtemp())
    export_web(site)
    page, page_scores = {}, None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        for isolated in (False, True):  # a plain server: one wasm thread; cross-origin isolated: one per core
            httpd = serve(site, ISOLATED if isolated else {})
            url = f"http://127.0.0.1:{httpd.server_address[1]}/"
            whole, model, scores, threads = page_times(browser, url, pairs, args.runs)
            httpd.shutdown()
            page_scores = page_scores or scores
            page[isolated] = threads, whole, model
        browser.close()
    rows, python_scores = [], None
    for isolated, (threads, page_whole, page_model) in page.items():
        whole, model, scores = python_times(site / MODEL_FILE, pairs, args.runs, threads)
        python_scores = python_scores or scores
        ms = [statistics.median(v) for v in (page_whole, page_model, whole, model)]
        rows.append([f"{threads}{' (cross-origin isolated page)' if isolated else ''}", *ms, f"{ms[0] / ms[2]:.2f}"])
    table(f"One verification of two photos, median ms ({len(pairs)} LFW dev pairs, {args.runs} runs each; "
          f"the page's fp16 file in both)",
          ["threads", "page (wasm): verification", "page: model", "onnxruntime-python: verification",
           "onnxruntime-python: model", "page / Python"], rows)
    library = Verifier(ROOT / "weights" / "faceverify-default.onnx", face_policy="central")
    library_scores = [float(np.dot(*library.embed([pair.left, pair.right]))) for pair in pairs]
    threshold = library.threshold()
    table("The page's scores", ["compared with", "largest |difference|", "decisions alike"], [
        ["onnxruntime-python, same file (the page's decoding, wasm)",
         max(abs(a - b) for a, b in zip(page_scores, python_scores)),
         f"{sum((a >= threshold) == (b >= threshold) for a, b in zip(page_scores, python_scores))} / {len(pairs)}"],
        ["the library (fp32 model, its own pipeline)", max(abs(a - b) for a, b in zip(page_scores, library_scores)),
         f"{sum((a >= threshold) == (b >= threshold) for a, b in zip(page_scores, library_scores))} / {len(pairs)}"]])


if __name__ == "__main__":
    main()
