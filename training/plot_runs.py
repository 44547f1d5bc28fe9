"""Plot training runs side by side from their history.jsonl (dev accuracy and loss by step) and
print each run's last and best dev figures.

    python training/plot_runs.py OUT.png RUN_DIR [RUN_DIR[@STEPS] ...]

`RUN_DIR@STEPS` shifts a run right by STEPS, e.g. a fine-tuning run after STEPS of pretraining,
so that runs of equal total compute end at the same x.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for spec in args.runs:
        run, _, shift = spec.partition("@")
        run, shift = Path(run), int(shift or 0)
        label = run.name + (f" (after {shift} steps)" if shift else "")
        records = [json.loads(line) for line in open(run / "history.jsonl")]
        evals = [(r["step"] + shift, r["eval"]) for r in records if "eval" in r]
        losses = [(r["step"] + shift, r["loss"]) for r in records if "loss" in r]
        if evals:
            acc_ax.plot([s for s, _ in evals], [100 * e["accuracy_mean"] for _, e in evals],
                        marker="o", ms=3, label=label)
            (last_step, last), best = evals[-1], max(evals, key=lambda se: se[1]["accuracy_mean"])
            print(f"{label}: step {last_step} accuracy {100 * last['accuracy_mean']:.2f}% "
                  f"AUC {last['auc']:.4f}; best {100 * best[1]['accuracy_mean']:.2f}% at step {best[0]}")
        if losses:
            first = losses[0][1] or 1.0
            loss_ax.plot([s for s, _ in losses], [v / first for _, v in losses], label=label)
    acc_ax.set(xlabel="step", ylabel="dev-pair accuracy (%)", title="LFW dev pairs (folds 7-8)")
    loss_ax.set(xlabel="step", ylabel="loss / first loss", title="training loss (relative)")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
