"""Where the embedding time goes and what each lever buys, side by side in one run: each member
alone (SFace on 112x112 crops, dlib's ResNet on 150x150) at batch 1 / 16 / 64 on 1 and 2 threads,
in the export before the PRelu rewrite (commit f6b34db's file, read with `git show`) vs the fast
file; the whole ensemble before the rewrite, bundled (PRelu as Relu + per-channel Muls,
`onnx_graph.prelu_as_relu`) and with dlib's member in int8 (training/fast_members.py, not shipped),
and onnxruntime thread layouts; each with its parity to the export before the rewrite (cosine per
face, median and 1st percentile, whole and per member) and, with --pairs-cache, LFW dev-pairs
accuracy. Crops: real LFW dev-pair photos aligned by the bundled model's pipeline.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_embedding.py \
        [--fast /root/faceverify-data/fast/faceverify-default-fast.onnx] [--faces 320] \
        [--pairs-cache dev_pairs.npz]   # `faceverify evaluate --cache` of pairs_dev.txt

Timings interleave the candidates round by round and report medians: other processes sharing the
two cores move absolute numbers, much less the ratios. Not in `make bench`: it needs the fast file
that training/fast_members.py builds (and the git history for the file before the rewrite).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.utils import Extractor

from common import ROOT, table
from faceverify import Verifier
from faceverify.data import read_pairs
from faceverify.detect import AlignedFace

BUNDLED = ROOT / "weights" / "faceverify-default.onnx"
FAST = Path("/root/faceverify-data/fast/faceverify-default-fast.onnx")
PAIRS = (ROOT / ".." / "shared" / "data" / "lfw" / "pairs_dev.txt").resolve()
#: the members' raw outputs in the ensemble graph (`export.ensemble_graph`), and their crops
MEMBERS = {"SFace (112x112)": ("faces_arcface_112", "m0/embeddings", slice(0, 128)),
           "dlib ResNet (150x150)": ("faces_dlib_150", "m1/embedding", slice(128, 256))}


#: the last commit whose bundled export kept SFace's PRelus
BEFORE_REWRITE = "f6b34db"


def file_at(commit: str, path: str, out: Path) -> Path:
    """`path` as it was at `commit`, written to `out`."""
    out.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True,
                                   capture_output=True).stdout)
    return out


def session(model: Path, threads: int = 2, parallel: bool = False):
    """A CPU session as `OnnxEmbedder` builds one (no spinning, quantised weights folded);
    `parallel`: the two members run concurrently, one thread each."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1 if parallel else threads
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def member_file(model: onnx.ModelProto, member: str, out: Path) -> Path:
    """One member of an ensemble graph on its own: its crops in, its raw embedding out."""
    inputs, output, _ = MEMBERS[member]
    onnx.save(Extractor(onnx.shape_inference.infer_shapes(model)).extract_model([inputs], [output]), str(out))
    return out


def run_all(sess, feeds: dict, batch: int):
    count = len(next(iter(feeds.values())))
    parts = [sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, count, batch)]
    return [np.concatenate(p) for p in zip(*parts)]


def faces_per_second(candidates: dict, rounds: int = 3) -> dict:
    """{name: (session, feeds, batch)} → {name: faces/s}, median of `rounds` interleaved runs."""
    seconds = {name: [] for name in candidates}
    for name, (sess, feeds, batch) in candidates.items():  # warm-up
        sess.run(None, {k: v[:batch] for k, v in feeds.items()})
    for _ in range(rounds):
        for name, (sess, feeds, batch) in candidates.items():
            start = time.perf_counter()
            run_all(sess, feeds, batch)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(next(iter(c[1].values()))) / statistics.median(seconds[name])
            for name, c in candidates.items()}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def parity(fast: np.ndarray, reference: np.ndarray) -> list[str]:
    """Cosine median / 1st percentile, whole embedding then each member's part."""
    out = []
    for part in [slice(None)] + [m[2] for m in MEMBERS.values()]:
        c = cosines(fast[:, part], reference[:, part])
        out.append(f"{np.median(c):.5f} / {np.percentile(c, 1):.5f}")
    return out


def dev_accuracy(model: Path, cache: Path | None) -> str:
    if cache is None:
        return "–"
    from faceverify.evaluation import AlignedPairs
    from faceverify.metrics import verification_report

    pairs = AlignedPairs.load(cache)
    verifier = Verifier(model)
    scores, valid = pairs.scores(verifier.embed_aligned, verifier.templates)
    report = verification_report(scores, pairs.same, pairs.folds, valid)
    return report.summary().split(" (")[0].removeprefix("accuracy ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", type=Path, default=FAST)
    parser.add_argument("--faces", type=int, default=320)
    parser.add_argument("--pairs-cache", type=Path)
    args = parser.parse_args()

    photos = list(dict.fromkeys(p for pair in read_pairs(PAIRS, PAIRS.parent / "images")
                                for p in (pair.left, pair.right)))
    faces = [f for f in Verifier(BUNDLED, face_policy="largest").analyze(photos[:args.faces])
             if isinstance(f, AlignedFace)]
    inputs = [m[0] for m in MEMBERS.values()]
    feeds = {name: np.stack(c) for name, c in zip(inputs, zip(*(f.crops for f in faces)))}
    n = len(faces)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = file_at(BEFORE_REWRITE, "weights/faceverify-default.onnx", tmp / "before.onnx")
        steps = {f"export before the PRelu rewrite ({BEFORE_REWRITE})": before,
                 "bundled: PRelu as (1-a)·Relu(x) + a·x": BUNDLED,
                 f"+ dlib in int8 ({args.fast.name}, not shipped)": args.fast}

        # members alone: before the rewrite vs fast
        before_model, fast_model = onnx.load(str(before)), onnx.load(str(args.fast))
        candidates = {}
        for member, (inputs, _, _) in MEMBERS.items():
            for label, model in (("before", before_model), ("fast", fast_model)):
                path = member_file(model, member, tmp / f"{label}-{inputs}.onnx")
                for threads in (1, 2):
                    sess = session(path, threads)
                    for batch in (1, 16, 64):
                        candidates[(member, label, threads, batch)] = (sess, {inputs: feeds[inputs][:128]}, batch)
        speed = faces_per_second(candidates)
        rows = []
        for (member, label, threads, batch), value in speed.items():
            if label == "fast":
                continue
            fast = speed[(member, "fast", threads, batch)]
            rows.append([member, threads, batch, value, fast, f"{fast / value:.2f}×"])
        table("each member alone, 128 faces, faces/s (before the rewrite vs the fast file)",
              ["member", "threads", "batch", "before", "fast", "fast vs before"], rows)

        # whole ensemble: each step, and thread layouts of the fast file
        candidates = {name: (session(path), feeds, 32) for name, path in steps.items()}
        layouts = {"fast, batch 16": (session(args.fast), feeds, 16),
                   "fast, batch 64": (session(args.fast), feeds, 64),
                   "fast, 1 thread": (session(args.fast, 1), feeds, 32),
                   "fast, members concurrently (ORT_PARALLEL, 1 thread each)": (session(args.fast, 2, True), feeds, 32)}
        speed = faces_per_second({**candidates, **layouts})
        reference = run_all(candidates[list(steps)[0]][0], feeds, 32)[0]
        base = speed[list(steps)[0]]
        rows = []
        for name, (sess, _, batch) in {**candidates, **layouts}.items():
            model = steps.get(name, args.fast)
            rows.append([name, speed[name], f"{speed[name] / base:.2f}×",
                         *parity(run_all(sess, feeds, batch)[0], reference),
                         dev_accuracy(model, args.pairs_cache) if name in steps else "same file"])
        table(f"whole ensemble, {n} LFW dev-pair faces (batch 32, 2 threads unless said), parity vs before",
              ["model / layout", "faces/s", "vs before", "cosine median / p1", "SFace part", "dlib part",
               "dev pairs accuracy"], rows)


if __name__ == "__main__":
    main()
