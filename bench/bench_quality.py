"""Error-versus-reject curves of the per-face quality (`faceverify.quality`), and its cost.

ERC: the threshold is fixed on every comparison (FMR 1e-4 on the LFW `dev_eval` all-pairs set:
3.3M impostor pairs; on the 1,200 dev pairs, whose 600 impostors cannot resolve 1e-4, the model's
best-accuracy threshold); then the genuine comparisons whose lower quality of the two faces is
lowest are discarded, a growing fraction, and FNMR is measured on the rest. For the overall score
and for each measure alone (the members' feature norms included). Cost: measuring and scoring a
face against embedding it, per face.

    python bench/bench_quality.py [--model weights/faceverify-default.onnx] [--plot docs/erc.png]
        [--cache-dir ~/faceverify-data/quality]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, table

sys.path.insert(0, str(ROOT / "training"))
from fit_quality import QUALITY_FIELDS, analyse, as_qualities  # noqa: E402

from faceverify.data import Sample, load_samples, read_pairs  # noqa: E402
from faceverify.verifier import FaceEmbedding, Verifier  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)
#: each measure as "higher is better"
COMPONENTS = {"yaw": lambda q: -np.abs(q[:, 0]), "pitch": lambda q: -np.abs(q[:, 1]),
              "roll": lambda q: -np.abs(q[:, 2]), "eye distance": lambda q: q[:, 3],
              "sharpness": lambda q: q[:, 4], "exposure": lambda q: -np.abs(q[:, 5] - 0.5),
              "contrast": lambda q: q[:, 6], "detector score": lambda q: q[:, 7]}


def erc(genuine: np.ndarray, pair_quality: np.ndarray, threshold: float) -> list[float]:
    """FNMR at `threshold` after discarding each of `FRACTIONS` of the lowest-quality genuine
    comparisons (ties broken by order)."""
    order = np.argsort(pair_quality, kind="stable")
    return [float(np.mean(genuine[order[int(round(f * len(order))):]] < threshold)) for f in FRACTIONS]


def curves(per_face: dict, left: np.ndarray, right: np.ndarray, genuine: np.ndarray, threshold: float) -> dict:
    return {name: erc(genuine, np.minimum(q[left], q[right]), threshold) for name, q in per_face.items()}


def per_face_qualities(verifier: Verifier, raw: np.ndarray) -> dict:
    out = {"overall": verifier.quality_model.scores(as_qualities(raw))} if verifier.quality_model else {}
    members = [m["name"] for m in verifier.metadata.members]
    norms = {f"{name} feature norm": raw[:, len(QUALITY_FIELDS) + i] for i, name in enumerate(members)
             if raw.shape[1] > len(QUALITY_FIELDS) + i}
    return {**out, **{name: fn(raw) for name, fn in COMPONENTS.items()}, **norms}


def all_pairs(verifier: Verifier, cache: Path | None):
    samples = [s for s in load_samples(DATA / "lfw" / "manifest.csv") if s.split == "dev_eval"]
    embeddings, raw, labels, _ = analyse(verifier, samples, cache)
    left, right = np.triu_indices(len(labels), 1)
    same = labels[left] == labels[right]
    scores = np.einsum("ij,ij->i", embeddings[left], embeddings[right])
    threshold = float(np.quantile(scores[~same], 1 - 1e-4))
    return per_face_qualities(verifier, raw), left[same], right[same], scores[same], threshold, int((~same).sum())


def dev_pairs(verifier: Verifier, cache: Path | None):
    pairs = read_pairs(DATA / "lfw" / "pairs_dev.txt", DATA / "lfw" / "images")
    paths = sorted({str(p) for pair in pairs for p in (pair.left, pair.right)})
    samples = [Sample(Path(p), p, p) for p in paths]  # identity = the photo: labels index paths
    embeddings, raw, _, keys = analyse(verifier, samples, cache)
    index = {key: row for row, key in enumerate(keys)}
    kept = [(index[str(p.left)], index[str(p.right)]) for p in pairs
            if p.same and str(p.left) in index and str(p.right) in index]
    left, right = map(np.array, zip(*kept))
    genuine = np.einsum("ij,ij->i", embeddings[left], embeddings[right])
    return per_face_qualities(verifier, raw), left, right, genuine, verifier.threshold()


def cost(verifier: Verifier, faces: int = 64) -> tuple[float, float]:
    """(ms per face to measure and score quality, ms per face to embed), on real faces."""
    photos = sorted((DATA / "lfw" / "images").glob("*/*.jpg"))[::41][:faces]
    found = [r for r in verifier.analyze(photos, face_policy="largest") if isinstance(r, FaceEmbedding)]
    crops = [np.stack(c) for c in zip(*(f.crops for f in found))]
    verifier.embed_aligned(*crops)
    start = time.perf_counter()
    verifier.embed_aligned(*crops)
    embed = (time.perf_counter() - start) / len(found)
    start = time.perf_counter()
    for _ in range(5):
        for face in found:
            verifier.quality_of(face, face.quality.feature_norms)
    quality = (time.perf_counter() - start) / (5 * len(found))
    return 1000 * quality, 1000 * embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "faceverify-default.onnx")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    verifier = Verifier(args.model)
    cache = (lambda name: args.cache_dir / name) if args.cache_dir else (lambda name: None)
    header = ["quality", *[f"discard {f:.0%}" for f in FRACTIONS], "FNMR cut at 5 %"]
    results = {}
    per_face, left, right, genuine, threshold, impostors = all_pairs(verifier, cache("dev-eval.npz"))
    results["dev_eval"] = curves(per_face, left, right, genuine, threshold)
    if "overall" in per_face:
        cuts = np.quantile(np.minimum(per_face["overall"][left], per_face["overall"][right]), FRACTIONS[1:])
        print("overall quality (lower of the two faces) at each discarded fraction: " +
              ", ".join(f"{f:.0%}: {c:.3f}" for f, c in zip(FRACTIONS[1:], cuts)) +
              f"; faces below the model's floor {verifier.quality_model.floor}: "
              f"{np.mean(per_face['overall'] < verifier.quality_model.floor):.1%}")
    table(f"LFW dev_eval, every pair: FNMR at FMR 1e-4 (threshold {threshold:.4f} from {impostors:,} "
          f"impostor pairs; {len(genuine):,} genuine)", header,
          [[name, *c, f"{1 - c[3] / c[0]:.0%}" if c[0] else "-"] for name, c in results["dev_eval"].items()])
    per_face, left, right, genuine, threshold = dev_pairs(verifier, cache("dev-pairs.npz"))
    results["dev pairs"] = curves(per_face, left, right, genuine, threshold)
    table(f"LFW dev pairs: FNMR at the best-accuracy threshold {threshold:.4f} ({len(genuine)} genuine)", header,
          [[name, *c, f"{1 - c[3] / c[0]:.0%}" if c[0] else "-"] for name, c in results["dev pairs"].items()])
    quality_ms, embed_ms = cost(verifier)
    table("Cost per face (ms, this machine)", ["quality (measure + score)", "embedding", "ratio"],
          [[quality_ms, embed_ms, f"{quality_ms / embed_ms:.1%}"]])
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, (name, found) in zip(axes, results.items()):
            for label, c in found.items():
                ax.plot(np.array(FRACTIONS) * 100, c, marker="o", lw=2.5 if label == "overall" else 1,
                        color="black" if label == "overall" else None, label=label)
            ax.set(title=f"ERC, LFW {name}", xlabel="lowest-quality genuine comparisons discarded (%)",
                   ylabel="FNMR" + (" at FMR 1e-4" if name == "dev_eval" else " at best-accuracy threshold"))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
