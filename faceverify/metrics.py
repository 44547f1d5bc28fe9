"""Verification metrics on pair scores: one implementation for evaluation, training and calibration.

A pair whose face could not be detected counts as an error: pass `valid=False` for it and it is
scored as wrong at every threshold (−inf for a genuine pair, +inf for an impostor pair).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .metadata import BEST_ACCURACY, FAR_1E2, PAIRS_ROC

FARS = (1e-1, 1e-2, 1e-3)
#: Operating points reported for all-pairs evaluation of a labelled set (millions of impostor pairs).
LOW_FARS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two batches of embeddings (normalised here, to be safe)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=-1)


def _as_arrays(scores, same, valid=None):
    scores = np.asarray(scores, dtype=np.float64).copy()
    same = np.asarray(same, dtype=bool)
    if valid is not None:
        invalid = ~np.asarray(valid, dtype=bool)
        scores[invalid & same] = -np.inf
        scores[invalid & ~same] = np.inf
    if same.all() or not same.any():
        raise ValueError("metrics need both genuine and impostor pairs")
    return scores, same


def roc_curve(scores, same, valid=None):
    """(false-accept rates, true-accept rates, thresholds), thresholds decreasing; accept = score ≥ t."""
    scores, same = _as_arrays(scores, same, valid)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], same[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # one point per distinct score
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s[last_of_run]]


def roc_auc(scores, same, valid=None) -> float:
    fpr, tpr, _ = roc_curve(scores, same, valid)
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(scores, same, valid=None) -> float:
    """The rate where false accepts equal false rejects (linear interpolation between ROC points)."""
    fpr, tpr, _ = roc_curve(scores, same, valid)
    fnr = 1.0 - tpr
    i = int(np.argmax(fpr >= fnr))  # first point where the curves have crossed
    if i == 0:
        return float(fpr[0])
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def tar_at_far(scores, same, far: float, valid=None):
    """(TAR, threshold) at the strictest operating point with FAR ≤ `far`; None if unresolvable.

    A FAR is resolvable only with at least 1/far impostor pairs.
    """
    scores, same = _as_arrays(scores, same, valid)
    if (~same).sum() * far < 1.0:
        return None
    fpr, tpr, thresholds = roc_curve(scores, same)
    i = int(np.flatnonzero(fpr <= far + 1e-12)[-1])
    return float(tpr[i]), float(thresholds[i])


def accuracy(scores, same, threshold: float, valid=None) -> float:
    scores, same = _as_arrays(scores, same, valid)
    return float(np.mean((scores >= threshold) == same))


def best_threshold(scores, same, valid=None) -> float:
    """Threshold with the highest accuracy (midpoint between neighbouring finite scores)."""
    scores, same = _as_arrays(scores, same, valid)
    finite = np.unique(scores[np.isfinite(scores)])
    if not len(finite):  # only failed pairs: every threshold gives the same (wrong) decisions
        return 0.0
    candidates = np.r_[finite[0] - 1e-6, (finite[:-1] + finite[1:]) / 2, finite[-1] + 1e-6]
    order = np.argsort(scores, kind="mergesort")
    s, y = scores[order], same[order]
    # accepted = scores ≥ t: correct = genuine at/above t + impostors below t
    below = np.searchsorted(s, candidates, side="left")
    genuine_below = np.r_[0, np.cumsum(y)][below]
    impostor_below = below - genuine_below
    correct = (y.sum() - genuine_below) + impostor_below
    return float(candidates[int(np.argmax(correct))])


def kfold_accuracy(scores, same, folds, valid=None):
    """Per-fold accuracy, each fold's threshold chosen on the other folds (the LFW protocol)."""
    scores, same = _as_arrays(scores, same, valid)
    folds = np.asarray(folds)
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        t = best_threshold(scores[~test], same[~test]) if (~test).any() else best_threshold(scores, same)
        thresholds.append(t)
        accuracies.append(float(np.mean((scores[test] >= t) == same[test])))
    return np.array(accuracies), np.array(thresholds)


@dataclass
class VerificationReport:
    """Everything `evaluate` reports; `to_dict` is its JSON form."""

    pairs: int
    genuine: int
    impostor: int
    failed_pairs: int
    folds: int
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: list
    auc: float
    eer: float
    best_threshold: float
    tar_at_far: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        tars = ", ".join(f"TAR@FAR={k}: " + (f"{v['tar']:.4f}" if v else "n/a (too few impostors)")
                         for k, v in self.tar_at_far.items())
        return (f"accuracy {100 * self.accuracy_mean:.2f}% ± {100 * self.accuracy_std:.2f} "
                f"({self.folds} folds, {self.pairs} pairs, {self.failed_pairs} failed), "
                f"AUC {self.auc:.4f}, EER {100 * self.eer:.2f}%, {tars}")


def verification_report(scores, same, folds, valid=None, fars=FARS) -> VerificationReport:
    """All metrics of a pairs protocol in one report."""
    same_arr = np.asarray(same, dtype=bool)
    valid_arr = np.ones(len(same_arr), bool) if valid is None else np.asarray(valid, bool)
    accs, _ = kfold_accuracy(scores, same, folds, valid_arr)
    tars = {}
    for far in fars:
        hit = tar_at_far(scores, same, far, valid_arr)
        tars[f"{far:g}"] = None if hit is None else {"tar": hit[0], "threshold": hit[1]}
    return VerificationReport(
        pairs=len(same_arr), genuine=int(same_arr.sum()), impostor=int((~same_arr).sum()),
        failed_pairs=int((~valid_arr).sum()), folds=len(accs),
        accuracy_mean=float(accs.mean()), accuracy_std=float(accs.std()),
        fold_accuracies=[float(a) for a in accs], auc=roc_auc(scores, same, valid_arr),
        eer=equal_error_rate(scores, same, valid_arr),
        best_threshold=best_threshold(scores, same, valid_arr), tar_at_far=tars)


def all_pairs_report(genuine, impostor, fars=LOW_FARS) -> dict:
    """AUC, EER and TAR at each FAR from every genuine and impostor pair of a labelled set; a FAR
    is reported only where at least 1/FAR impostor pairs resolve it, with the count behind it."""
    scores = np.r_[genuine, impostor]
    same = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    tars = {}
    for far in fars:
        hit = tar_at_far(scores, same, far)
        tars[f"{far:g}"] = None if hit is None else {
            "tar": hit[0], "threshold": hit[1], "impostors_accepted": int((impostor >= hit[1]).sum())}
    return {"genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor)),
            "auc": roc_auc(scores, same), "eer": equal_error_rate(scores, same), "tar_at_far": tars}


def plot_roc(scores, same, path, valid=None, label: str = "model") -> None:
    """Save the ROC curve (log-scale FAR) as a PNG."""
    scores, same = _as_arrays(scores, same, valid)
    plot_rocs({label: (scores[same], scores[~same])}, path)


def plot_rocs(curves: dict, path, title: str = "") -> None:
    """Several ROC curves in one PNG (log-scale FAR): {label: (genuine scores, impostor scores)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    lowest = 1.0
    for label, (genuine, impostor) in curves.items():
        scores = np.r_[genuine, impostor]
        same = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
        fpr, tpr, _ = roc_curve(scores, same)
        lowest = min(lowest, 1 / max(len(impostor), 1))
        ax.plot(np.maximum(fpr, lowest), tpr, label=f"{label} (AUC {roc_auc(scores, same):.4f})")
    ax.set_xscale("log")
    ax.set_xlim(max(lowest, 1e-6), 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def calibrated_thresholds(scores, same, folds, valid, source: str, roc_points: int = 64) -> dict:
    """Model-metadata thresholds from dev-pair scores: best accuracy and FAR = 1e-2, plus a
    subsampled ROC (threshold, FAR, TAR) so a UI can say what any threshold means."""
    report = verification_report(scores, same, folds, valid)
    thresholds = {BEST_ACCURACY: {"value": report.best_threshold, "pairs": source,
                                  "accuracy": report.accuracy_mean}}
    at_far = report.tar_at_far.get("0.01")
    if at_far:
        thresholds[FAR_1E2] = {"value": at_far["threshold"], "pairs": source, "tar": at_far["tar"]}
    fpr, tpr, cut = roc_curve(scores, same, valid)
    keep = np.isfinite(cut)
    picks = np.unique(np.linspace(0, keep.sum() - 1, roc_points).round().astype(int))
    thresholds[PAIRS_ROC] = [[round(float(t), 5), round(float(f), 5), round(float(r), 5)]
                         for t, f, r in zip(cut[keep][picks], fpr[keep][picks], tpr[keep][picks])]
    return thresholds


def far_at_threshold(roc: list, threshold: float) -> float:
    """False-accept rate of a threshold, interpolated on a stored (threshold, FAR, TAR) ROC."""
    points = np.asarray(roc, dtype=np.float64)
    order = np.argsort(points[:, 0])
    return float(np.interp(threshold, points[order, 0], points[order, 1]))
