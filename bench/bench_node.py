"""The Node example (examples/node/verify.mjs: the end-to-end graph on onnxruntime-node, photos
decoded by jpeg-js and pngjs) against Python on LFW dev pairs, one run: how far its scores are from
the library's and whether it decides every pair alike, on the JPEG photos and on lossless PNG copies
of them (Pillow's pixels: the JPEG decoder taken out); and, to tell the parts apart, from the same
graph run by onnxruntime-python on Pillow's pixels. One `node verify.mjs` process per pair and
format, as a user runs it (its time: process start, model load, two photos).

    python bench/bench_node.py [--pairs 300]

Needs node and the example's npm packages (`make js`).
"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tqdm import tqdm

from common import LFW, ROOT, table
from faceverify import FaceVerifyError, Verifier, load_rgb
from faceverify.data import read_pairs
from faceverify.e2e.model import CENTRAL, export_end_to_end

DEV_PAIRS = LFW.parent / "pairs_dev.txt"
EXAMPLE = ROOT / "examples" / "node"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300, help="LFW dev pairs, spread evenly over the 1,200")
    args = parser.parse_args()
    node = shutil.which("node")
    if node is None:
        print("bench_node: node is not installed: skipped")
        return
    if not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        sys.exit("bench_node: examples/node/node_modules is missing: run `make js`")
    folder = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the graph and the PNG copies
    model = folder / "e2e.onnx"
    export_end_to_end(model)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    verifier = Verifier(ROOT / "weights" / "faceverify-default.onnx", face_policy="central")
    threshold = verifier.threshold()
    pairs = read_pairs(DEV_PAIRS, LFW)
    pairs = pairs[::max(1, len(pairs) // args.pairs)][:args.pairs]
    photos = sorted({p for pair in pairs for p in (pair.left, pair.right)})

    library, graph, png = {}, {}, {}  # per photo: the library's embedding, the graph's in Python, the PNG copy
    for path in tqdm(photos, desc="Python", unit="photo"):
        rgb = load_rgb(path)
        (found,) = verifier.analyze([rgb], [str(path)])
        library[path] = None if isinstance(found, FaceVerifyError) else found.embedding
        embedding, count = session.run(["embedding", "faces_found"], {"image": rgb, "face_policy": np.array([CENTRAL], np.int64)})
        graph[path] = embedding if count[0] else None
        png[path] = folder / f"{path.stem}.png"
        Image.fromarray(rgb).save(png[path], compress_level=1)  # lossless: Pillow's pixels

    def cosine(found, pair):
        a, b = found[pair.left], found[pair.right]
        return None if a is None or b is None else float(np.dot(a, b))

    node_scores, seconds, thresholds = {"jpeg": [], "png": []}, [], set()
    for pair in tqdm(pairs, desc="node", unit="pair"):
        for kind, (a, b) in (("jpeg", (pair.left, pair.right)), ("png", (png[pair.left], png[pair.right]))):
            start = time.perf_counter()
            run = subprocess.run([node, "verify.mjs", str(model), str(a), str(b)], cwd=EXAMPLE,
                                 capture_output=True, text=True, timeout=300)
            seconds.append(time.perf_counter() - start)
            if run.returncode == 2 and "no face found" in run.stderr:
                node_scores[kind].append(None)
                continue
            if run.returncode != 0:
                sys.exit(f"bench_node: {run.stderr.strip()}")
            result = json.loads(run.stdout)
            node_scores[kind].append(result["score"])
            thresholds.add(result["threshold"])

    references = {"the library": [cosine(library, p) for p in pairs],
                  "the graph in onnxruntime-python, Pillow's pixels": [cosine(graph, p) for p in pairs]}
    rows = []
    for kind, given in (("jpeg", "JPEG photos (jpeg-js)"), ("png", "PNG copies (Pillow's pixels)")):
        for reference, theirs in references.items():
            both = [(n, t) for n, t in zip(node_scores[kind], theirs) if n is not None and t is not None]
            differences = np.array([abs(n - t) for n, t in both])
            alike = sum((n >= threshold) == (t >= threshold) for n, t in both)
            missing = f"{sum(n is None for n in node_scores[kind])} / {sum(t is None for t in theirs)}"
            rows.append([given, reference, len(both), f"{np.median(differences):.2g}", f"{differences.max():.2g}",
                         f"{alike} of {len(both)}", missing])
    table(f"The Node example against Python on {len(pairs)} LFW dev pairs (threshold {threshold:.4f})",
          ["Node given", "compared with", "pairs", "score difference: median", "maximum", "decided alike",
           "pairs without a face: Node / Python"], rows)
    gap = max(abs(t - threshold) for t in thresholds)
    print(f"\nthreshold from the graph: {gap:.1g} from the library's; {len(seconds)} node runs, "
          f"median {statistics.median(seconds):.2f} s each (process start, model load, two photos)")


if __name__ == "__main__":
    main()
