"""Plot training runs side by side from their history.jsonl: dev accuracy and loss by step.

    python training/plot_runs.py OUT.png RUN_DIR [RUN_DIR...]
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
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for run in args.runs:
        records = [json.loads(line) for line in open(run / "history.jsonl")]
        evals = [(r["step"], 100 * r["eval"]["accuracy_mean"]) for r in records if "eval" in r]
        losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
        if evals:
            acc_ax.plot(*zip(*evals), marker="o", ms=3, label=run.name)
        if losses:
            first = losses[0][1] or 1.0
            loss_ax.plot([s for s, _ in losses], [v / first for _, v in losses], label=run.name)
    acc_ax.set(xlabel="step", ylabel="dev-pair accuracy (%)", title="LFW dev pairs (folds 7-8)")
    loss_ax.set(xlabel="step", ylabel="loss / first loss", title="training loss (relative)")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
