"""What happens around the training steps, as callbacks the `Trainer` calls: logging and dev-pair
evaluation (insightface's `utils_callbacks` pattern). Only the main rank has them.

A callback gets `on_step(trainer, record)` after every optimiser step (`record`: step, loss,
learning rate, gradient norm, images/s and the method's statistics, still as tensors: converting
them is the callback's choice, since it synchronises a GPU) and `on_end(trainer)` when the run ends.
What it must carry across `--resume` goes in its `state_dict`.
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from ..evaluation import AlignedPairs
from ..metrics import verification_report

BEST_FILE = "best.pt"  # best dev accuracy so far, inference checkpoint with metadata


class Callback:
    def on_step(self, trainer, record: dict) -> None:
        """After each optimiser step."""

    def on_end(self, trainer) -> None:
        """Once the run has finished (not when it is stopped to be resumed)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


class RunLog:
    """The run's records: `history.jsonl` (one JSON object a line) and TensorBoard under `tb/`."""

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.history = out / "history.jsonl"
        self.writer = SummaryWriter(str(out / "tb"))

    def write(self, record: dict, scalars: dict, prefix: str) -> None:
        for key, value in scalars.items():
            if value == value:  # skip NaN
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        with open(self.history, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.writer.close()


class StepLogger(Callback):
    """Every `every` steps (and the first): the step's figures to the progress bar, TensorBoard and
    history."""

    def __init__(self, log: RunLog, every: int, bar: tqdm):
        self.log, self.every, self.bar = log, every, bar

    def on_step(self, trainer, record: dict) -> None:
        self.bar.update(1)
        if record["step"] % self.every and record["step"] != 1:
            return
        record = {key: value if key == "step" else float(value) for key, value in record.items()}
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                             img_s=f"{record['images_per_s']:.0f}")
        self.log.write(record, {k: v for k, v in record.items() if k != "step"}, "train")


class DevEvaluation(Callback):
    """Every `every` steps and at the end: the dev-pair report to TensorBoard, history and the
    console; the best accuracy so far is saved as `best.pt`, thresholds calibrated on these pairs."""

    def __init__(self, pairs: AlignedPairs, every: int, source: str):
        self.pairs, self.every, self.source = pairs, every, source
        self.best = {"accuracy": -1.0}

    def on_step(self, trainer, record: dict) -> None:
        if record["step"] % self.every == 0:
            self.evaluate(trainer)

    def on_end(self, trainer) -> None:
        if trainer.step % self.every:
            self.evaluate(trainer)

    def evaluate(self, trainer) -> None:
        dev = trainer.dev_scores(self.pairs)
        report = verification_report(*dev)
        trainer.log.write({"step": trainer.step, "eval": report.to_dict()},
                       {key: getattr(report, key) for key in ("accuracy_mean", "auc", "eer")}, "dev")
        tqdm.write(f"step {trainer.step}: dev {report.summary()}")
        if report.accuracy_mean > self.best["accuracy"]:
            self.best = {"accuracy": report.accuracy_mean, "auc": report.auc, "step": trainer.step}
            trainer.save_model(BEST_FILE, report, dev, self.source)

    def state_dict(self) -> dict:
        return {"best": json.dumps(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.best = json.loads(state["best"])
