"""Do the quality gates catch what they should? On sets the model finds hard, from the shared data:
AT&T/ORL (turned and tilted heads) and Extended Yale B (extreme lighting). Every photo goes
through the model's pipeline; per set: the share of faces the floor flags unreliable, the miss
rate (FNMR at the model's FAR-1e-4 all-pairs threshold) of genuine comparisons between two
reliable faces against those involving a flagged one, and the flagged faces' reasons.

    python bench/bench_gates.py [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from common import ROOT, table

sys.path.insert(0, str(ROOT / "training"))
from fit_quality import analyse, as_qualities  # noqa: E402

from faceverify.data import load_samples  # noqa: E402
from faceverify.operating import threshold_for_far  # noqa: E402
from faceverify.quality import problems  # noqa: E402
from faceverify.verifier import Verifier  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SETS = {"AT&T/ORL": DATA / "orl" / "manifest.csv", "Extended Yale B": DATA / "yaleb" / "manifest.csv"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "faceverify-default.onnx")
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args()
    verifier = Verifier(args.model)
    model = verifier.quality_model
    threshold = threshold_for_far(verifier.metadata.all_pairs_roc["points"], 1e-4)
    rows, examples = [], []
    for name, manifest in SETS.items():
        samples = load_samples(manifest)
        cache = args.cache_dir / f"gates-{manifest.parent.name}.npz" if args.cache_dir else None
        embeddings, raw, labels, keys = analyse(verifier, samples, cache)
        qualities = as_qualities(raw)
        reliable = model.scores(qualities) >= model.floor
        left, right = np.triu_indices(len(labels), 1)
        same = labels[left] == labels[right]
        left, right = left[same], right[same]
        missed = np.einsum("ij,ij->i", embeddings[left], embeddings[right]) < threshold
        both = reliable[left] & reliable[right]
        reasons = Counter(re.sub(r"~?\d+(\.\d+)?", "N", p).split(" (")[0] for q, ok in zip(qualities, reliable)
                          if not ok for p in (problems(q) or ["low score, no single cause"]))
        rows.append([name, len(samples), len(labels), f"{1 - reliable.mean():.1%}",
                     f"{missed[both].mean():.3f} ({both.sum():,})", f"{missed[~both].mean():.3f} ({(~both).sum():,})",
                     ", ".join(f"{r} {n}" for r, n in reasons.most_common(4))])
        worst = np.argsort(model.scores(qualities))[:3]
        examples += [f"{name}: `{keys[i]}` quality {model.scores([qualities[i]])[0]:.2f}: "
                     f"{'; '.join(problems(qualities[i])) or 'no single cause'}" for i in worst]
    table(f"Quality floor {model.floor} on hard sets (FNMR at the FAR-1e-4 threshold {threshold:.4f}; "
          "genuine comparisons in brackets)",
          ["set", "photos", "faces", "flagged unreliable", "FNMR, both reliable", "FNMR, a flagged face",
           "reasons named (flagged faces)"], rows)
    print("\nLowest-quality faces:\n" + "\n".join(f"- {e}" for e in examples))


if __name__ == "__main__":
    main()
