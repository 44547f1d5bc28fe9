"""Open-set identification with distractors, NIST FRVT 1:N style.

Known people: M identities of LFW `dev_eval` (never trained on) with ≥ 3 photos, each enrolled with
2 photos (template = mean embedding, as `Gallery` does); their other photos are the mated queries.
Strangers: every photo of the dev_eval identities not enrolled. Distractors: N more enrolled
identities from a prepared training set (the extra set), which no query belongs to: each of their
faces is aligned from its source photo with the landmarks `prepare` recorded, to every template the
model takes. For each N the
threshold follows the gallery rule (`operating`: target FPIR at the gallery's size, read off the
model's all-pairs ROC); reported: rank-1 (closed set), FNIR (mated queries not answered with the
right name) and FPIR (strangers accepted as someone) at that threshold, plus the FNIR-FPIR curve.

    python bench/bench_openset.py --model weights/faceverify-default.onnx \
        --cache ~/faceverify-data/dev_eval.npz --distractors ~/faceverify-data/aligned/extra \
        --distractor-photos ~/faceverify-data/extra
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from common import ROOT, embed_prepared_faces, table

from faceverify.data import load_samples
from faceverify.evaluation import AlignedIdentities
from faceverify.gallery.gallery import DEFAULT_FPIR
from faceverify.operating import describe, far_for_fpir, threshold_for_far
from faceverify.verifier import Verifier

LFW = ROOT.parent / "shared" / "data" / "lfw"


def templates(embeddings: np.ndarray) -> np.ndarray:
    mean = embeddings.mean(axis=0)
    return mean / np.linalg.norm(mean)


def split_known(aligned: AlignedIdentities, known: int, seed: int):
    """(enrolment rows per known identity, mated query rows, stranger rows)."""
    rng = np.random.default_rng(seed)
    usable = np.flatnonzero(aligned.ok)
    by_identity = {}
    for row in usable:
        by_identity.setdefault(int(aligned.labels[row]), []).append(row)
    eligible = sorted(i for i, rows in by_identity.items() if len(rows) >= 3)
    chosen = set(rng.choice(eligible, size=min(known, len(eligible)), replace=False).tolist())
    enrol = {i: by_identity[i][:2] for i in sorted(chosen)}
    mated = [(row, i) for i in sorted(chosen) for row in by_identity[i][2:]]
    strangers = [row for i, rows in by_identity.items() if i not in chosen for row in rows]
    return enrol, mated, strangers


def distractors(verifier: Verifier, prepared: Path, photos: Path, count: int, seed: int) -> np.ndarray:
    """Templates (mean of 2 photos) of `count` random identities of a prepared set with ≥ 2 faces."""
    with open(prepared / "manifest.csv", newline="") as fh:
        by_identity = {}
        for row in csv.DictReader(fh):
            by_identity.setdefault(row["identity"], []).append(row)
    eligible = sorted(name for name, rows in by_identity.items() if len(rows) >= 2)
    picked = np.random.default_rng(seed).choice(eligible, size=min(count, len(eligible)), replace=False)
    rows = [row for name in picked for row in by_identity[name][:2]]
    vectors = embed_prepared_faces(verifier, rows, photos)
    return np.stack([templates(pair) for pair in vectors.reshape(len(picked), 2, -1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "weights" / "faceverify-default.pt"))
    parser.add_argument("--cache", type=Path, help="aligned dev_eval crops (built if absent)")
    parser.add_argument("--distractors", type=Path, help="a prepared folder (e.g. aligned/extra)")
    parser.add_argument("--distractor-photos", type=Path, help="the photos it was prepared from "
                        "(their templates are cached in the prepared folder, per model)")
    parser.add_argument("--counts", default="0,1000,10000")
    parser.add_argument("--known", type=int, default=60)
    parser.add_argument("--target-fpir", type=float, default=DEFAULT_FPIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=Path("openset.png"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    verifier = Verifier(args.model, device="cpu")
    roc = verifier.metadata.gallery_roc  # what `Gallery` reads
    if roc is None:
        raise SystemExit(f"{args.model}: no all-pairs ROC; run `faceverify calibrate --identities` first")
    if args.cache and args.cache.is_file():
        aligned = AlignedIdentities.load(args.cache)
    else:
        aligned = AlignedIdentities.build(load_samples(LFW / "manifest.csv", "dev_eval"), verifier.detector,
                                          templates=verifier.templates)
        if args.cache:
            aligned.save(args.cache)
    embeddings = aligned.embeddings(verifier.embed_aligned, verifier.templates)
    enrol, mated, strangers = split_known(aligned, args.known, args.seed)
    known_templates = np.stack([templates(embeddings[rows]) for rows in enrol.values()])
    known_ids = list(enrol)

    counts = [int(c) for c in args.counts.split(",")]
    distractor_templates = np.zeros((0, known_templates.shape[1]), np.float32)
    if max(counts) > 0:
        if not (args.distractors and args.distractor_photos):
            raise SystemExit("--distractors and --distractor-photos are needed for counts above 0")
        cache = args.distractors / f"openset-templates-{verifier.metadata.short_hash}-{max(counts)}-{args.seed}.npy"
        if cache.is_file():
            distractor_templates = np.load(cache)
        else:
            distractor_templates = distractors(verifier, args.distractors, args.distractor_photos,
                                               max(counts), args.seed)
            np.save(cache, distractor_templates)

    results, curves = [], {}
    mated_rows, mated_truth = np.array([r for r, _ in mated]), np.array([known_ids.index(i) for _, i in mated])
    for count in counts:
        gallery = np.concatenate([known_templates, distractor_templates[:count]])
        mated_scores = embeddings[mated_rows] @ gallery.T
        stranger_best = (embeddings[strangers] @ gallery.T).max(axis=1)
        top = mated_scores.argmax(axis=1)
        correct = top == mated_truth
        best = mated_scores.max(axis=1)
        threshold = threshold_for_far(roc["points"], far_for_fpir(args.target_fpir, len(gallery)))
        expected = describe(roc["points"], threshold, len(gallery), "")
        fnir = float(np.mean(~(correct & (best >= threshold))))
        fpir = float(np.mean(stranger_best >= threshold))
        # the operating point measured on the strangers themselves: the lowest threshold that
        # accepts at most the target share of them, and the FNIR there
        measured = float(np.quantile(stranger_best, 1 - args.target_fpir, method="higher")) + 1e-6
        results.append({"distractors": count, "gallery_size": len(gallery), "rank1": float(correct.mean()),
                        "threshold": threshold, "fnir": fnir, "fpir": fpir,
                        "measured_threshold": measured,
                        "fnir_at_measured": float(np.mean(~(correct & (best >= measured)))),
                        "fpir_at_measured": float(np.mean(stranger_best >= measured)),
                        "expected_fpir": expected.fpir, "mated_queries": len(mated),
                        "stranger_queries": len(strangers)})
        sweep = np.linspace(-0.2, 1.0, 241)
        curves[count] = ([float(np.mean(stranger_best >= t)) for t in sweep],
                         [float(np.mean(~(correct & (best >= t)))) for t in sweep])
    table(f"Open-set identification, {args.known} known people (2 photos each) + distractors; "
          f"threshold for target FPIR {args.target_fpir:g}",
          ["distractors", "gallery", "rank-1", "rule threshold", "FNIR", "FPIR", "FPIR expected",
           "threshold at measured FPIR", "FNIR there", "mated / stranger queries"],
          [[r["distractors"], r["gallery_size"], r["rank1"], r["threshold"], r["fnir"], r["fpir"],
            r["expected_fpir"], r["measured_threshold"], r["fnir_at_measured"],
            f"{r['mated_queries']} / {r['stranger_queries']}"] for r in results])
    plot(curves, results, args.plot)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def plot(curves: dict, results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for (count, (fpir, fnir)), result in zip(curves.items(), results):
        line, = ax.plot(np.maximum(fpir, 1e-4), fnir, label=f"{count} distractors")
        ax.plot(max(result["fpir"], 1e-4), result["fnir"], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("FPIR (strangers accepted)")
    ax.set_ylabel("FNIR (known people missed)")
    ax.set_title("open-set identification (dots: operating threshold)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
