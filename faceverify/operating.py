"""Operating points: which threshold gives which error rates, in one place.

Verification picks a false accept rate (FAR) for one comparison. Identification in a gallery of N
people compares a stranger with N templates, and accepts them if any passes, so its false positive
identification rate is FPIR(t) = 1 − (1 − FAR(t))^N ≈ N·FAR(t): a threshold that is strict for one
pair accepts many strangers in a large gallery. The gallery therefore turns a target FPIR and its
current size into the FAR each comparison may have, FAR = 1 − (1 − FPIR)^(1/N), and reads the
threshold for that FAR off the model's all-pairs ROC (millions of impostor pairs, see
`faceverify calibrate --identities`), recomputing it as the gallery grows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: How many points of that ROC are stored (log-spaced in FAR).
ROC_POINTS = 160


def far_for_fpir(fpir: float, identities: int) -> float:
    """The per-comparison FAR at which a gallery of `identities` people has the given FPIR."""
    if not 0 < fpir < 1:
        raise ValueError(f"target FPIR must be in (0, 1), got {fpir}")
    return 1.0 - (1.0 - fpir) ** (1.0 / max(1, identities))


def fpir_for_far(far: float, identities: int) -> float:
    return 1.0 - (1.0 - far) ** max(1, identities)


def roc_table(genuine: np.ndarray, impostor: np.ndarray, points: int = ROC_POINTS) -> list[list[float]]:
    """[threshold, FAR, TAR, impostor pairs accepted] at FARs log-spaced from 1/impostors to 1:
    a compact ROC that still resolves the strict end."""
    impostor = np.sort(np.asarray(impostor, np.float64))[::-1]
    genuine = np.sort(np.asarray(genuine, np.float64))
    counts = np.unique(np.r_[0, np.geomspace(1, len(impostor), points - 1).round().astype(int)])
    table = []
    for accepted in counts:
        threshold = float(np.nextafter(impostor[accepted], np.inf)) if accepted < len(impostor) else float(impostor[-1])
        accepted_now = int((impostor >= threshold).sum())
        tar = 1.0 - np.searchsorted(genuine, threshold, side="left") / len(genuine)
        table.append([threshold, accepted_now / len(impostor), round(float(tar), 6), accepted_now])
    return table


def roc_entry(genuine: np.ndarray, impostor: np.ndarray, source: str) -> dict:
    """A `roc_table` as a model's metadata keeps it (`ModelMetadata.thresholds`), with where its
    scores came from and how many there were."""
    return {"source": source, "genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor)),
            "columns": ["threshold", "far", "tar", "impostors_accepted"], "points": roc_table(genuine, impostor)}


@dataclass
class OperatingPoint:
    """A threshold and what it means: per comparison (FAR, TAR) and, for a gallery of
    `identities` people, the expected FPIR (strangers accepted) and FNIR (enrolled people missed)."""

    threshold: float
    far: float
    fnir: float
    fpir: float
    identities: int
    rule: str  # how the threshold was chosen

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_for_far(table: list, far: float) -> float:
    """The most lenient stored threshold whose FAR does not exceed `far` (conservative)."""
    rows = np.asarray(table, np.float64)
    allowed = rows[rows[:, 1] <= far]
    if not len(allowed):  # stricter than the ROC resolves: the strictest measured point
        return float(rows[:, 0].max())
    return float(allowed[:, 0].min())


def describe(table: list, threshold: float, identities: int, rule: str) -> OperatingPoint:
    """The operating point of `threshold` on the stored ROC (interpolated between its points)."""
    rows = np.asarray(table, np.float64)
    order = np.argsort(rows[:, 0])
    far = float(np.interp(threshold, rows[order, 0], rows[order, 1]))
    tar = float(np.interp(threshold, rows[order, 0], rows[order, 2]))
    return OperatingPoint(threshold, far, 1.0 - tar, fpir_for_far(far, identities), identities, rule)
