"""`faceverify finetune`: adapt a model to a user's own people and cameras in one command.

A folder of identity sub-folders → an identity-disjoint train / validation split → the training
identities prepared (detected once, aligned to the trainable member's template) → that member
fine-tuned from the base model's weights with triplet loss and online semi-hard negatives, plus a
distillation term toward the base member's own embeddings of the same faces, which keeps it from
forgetting what it knew → the member put back in the base model (other members, e.g. SFace, stay
as shipped) → thresholds calibrated on every pair of the validation identities → ONNX export →
a before / after report (AUC, EER, TAR at low FAR, both ROC curves in one plot).

Every stage leaves its result in the work folder and is skipped when rerun, and training
checkpoints, so a killed run continues where it stopped.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data import load_samples
from ..errors import FaceVerifyError
from ..evaluation import AlignedIdentities, all_pairs_scores
from ..metadata import ALL_PAIRS_ROC
from ..metrics import all_pairs_report, calibrated_thresholds, plot_rocs
from ..embed import TorchEmbedder
from ..models import Ensemble, Embedder, build_metadata, load_checkpoint, save_checkpoint, set_thresholds
from ..models.members import PRETRAINED_STUDENTS
from ..operating import roc_entry

#: below this a split cannot say anything: the validation side needs genuine pairs of several people
MIN_IDENTITIES, MIN_PHOTOS = 6, 2


#: default length: about two passes over the training faces, within these bounds (a few hundred
#: photos still get enough steps to move; a few hundred thousand stay within hours on a CPU)
MIN_STEPS, MAX_STEPS, EPOCHS = 300, 5000, 2


@dataclass
class FinetuneConfig:
    steps: int | None = None  # None: `training_steps` of the training faces
    lr: float = 1e-4
    p: int = 16  # identities per batch (fewer when the training side has fewer)
    k: int = 4
    frozen_stages: int = 2
    distill_weight: float = 1.0
    margin: float = 0.1
    val_fraction: float = 0.3
    max_val_photos: int = 8000  # held-out photos at most: their every pair is scored (32M pairs)
    seed: int = 0


def finetune(dataset: str | Path, out: str | Path, base: str | Path, work: str | Path | None = None,
             cfg: FinetuneConfig | None = None, progress: bool = True) -> dict:
    """Fine-tune `base` (a .pt checkpoint) on `dataset`; writes `out` (.pt), its .onnx export and
    `work`/report.json + report.png; returns the report."""
    from ..detect.registry import create_detector
    from ..export import export_embedder
    from ..prepare import prepare_dataset
    from .config import load_config
    from .teachers import ModelTeacher, embed_prepared
    from .trainer import Trainer

    cfg, out = cfg or FinetuneConfig(), Path(out)
    work = Path(work) if work else out.with_name(out.stem + "-finetune")
    work.mkdir(parents=True, exist_ok=True)
    base_model, base_meta = load_checkpoint(base)
    claim_work(work / "finetune.json", {"dataset": str(Path(dataset).resolve()), "base": base_meta.weights_sha256,
                                        **asdict(cfg)})
    member = trainable_member(base_model)
    split = identity_split(dataset, work / "split.json", cfg.val_fraction, cfg.seed, cfg.max_val_photos)
    student = one_member(base_model, member)
    student_meta = build_metadata(student, hashed=False)  # its arch, size and template
    init = work / "base-member.pt"
    if not init.is_file():
        save_checkpoint(init, student, training={"from": str(base)})
    template = student_meta.templates[0]
    detector = create_detector(base_meta.detector_name)  # the landmarks the model will be used with
    prepared = work / "prepared"
    train_manifest = write_manifest(split["train"], work / "train.csv")
    prepare_dataset(train_manifest, prepared, detector, template=template, progress=progress)
    # what the base member makes of each training face: the anchor that guards against forgetting
    embed_prepared(train_manifest, prepared, ModelTeacher(init), progress=progress)

    identities, faces = prepared_identities(prepared / "manifest.csv")
    steps = cfg.steps or training_steps(faces, min(cfg.p, identities) * cfg.k)
    train_cfg = load_config(None, [
        f"out_dir={work / 'run'}", f"init_from={init}", f"seed={cfg.seed}", "checkpoint_every=25",
        "log_every=10", f"data.datasets=[{prepared}]", f"data.p={min(cfg.p, identities)}", f"data.k={cfg.k}",
        f"model.arch={student_meta.members[0]['arch'] if student_meta.members else student_meta.arch}",
        f"model.embedding_dim={student_meta.embedding_dim}",
        f"model.frozen_stages={cfg.frozen_stages}", "objective.name=triplet", "objective.mining=semihard",
        f"objective.margin={cfg.margin}", "distill.teachers=[ensemble]", "distill.anchor=true", f"distill.weight={cfg.distill_weight}",
        "optim.optimizer=adamw", f"optim.lr={cfg.lr}", f"optim.steps={steps}",
        f"optim.warmup_steps={max(1, steps // 20)}", "optim.precision=fp32", "eval.pairs=null"])
    trainer = Trainer(train_cfg, resume=True, progress=progress)
    if not (work / "run" / "final.pt").is_file():
        trainer.fit()
    tuned_member, _ = load_checkpoint(work / "run" / "final.pt")
    tuned = replace_member(base_model, member, tuned_member)
    training = {"finetune": {**asdict(cfg), "steps": steps, "dataset": str(dataset), "base": str(base),
                             "base_weights_sha256": base_meta.weights_sha256,
                             "train_identities": sorted(split["train"]), "val_identities": sorted(split["val"])}}
    save_checkpoint(out, tuned, training=training, half=base_meta.weights_dtype == "float16", flip=base_meta.flip)

    validation = AlignedIdentities.build(load_samples(write_manifest(split["val"], work / "val.csv")),
                                         detector, templates=base_meta.templates, progress=progress)
    before = evaluate_model(TorchEmbedder(base_model, base_meta), validation)
    after = evaluate_model(TorchEmbedder.from_checkpoint(out, "cpu"), validation)  # as written (fp16)
    plot_rocs({"base model": before.pop("scores"), "fine-tuned": after["scores"]}, work / "report.png",
              "validation identities, every pair")
    genuine, impostor = after.pop("scores")
    report = {"base": before, "finetuned": after, "val_identities": len(split["val"]),
              "val_photos": int(validation.ok.sum()), "train_identities": identities}
    set_thresholds(out, {**balanced_thresholds(genuine, impostor, cfg.seed, "validation identities"),
                         ALL_PAIRS_ROC: roc_entry(genuine, impostor, f"finetune validation "
                                                                     f"({report['val_identities']} identities)")},
                   base_meta.flip, base_meta.detector)
    export_embedder(out, out.with_suffix(".onnx"))
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return report


def claim_work(path: Path, run: dict) -> None:
    """A work folder serves one fine-tune (dataset, base model, settings): a rerun of the same one
    resumes, another one is refused rather than mixed with it."""
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(json.dumps(run)):
            raise FaceVerifyError(f"{path.parent} holds a fine-tune of another dataset, base model or "
                                  "settings; give another --work (or delete it to start again)")
        return
    path.write_text(json.dumps(run, indent=1))


def training_steps(faces: int, batch: int) -> int:
    """The default number of steps: `EPOCHS` passes over `faces`, within [MIN_STEPS, MAX_STEPS]."""
    return int(np.clip(round(EPOCHS * faces / batch), MIN_STEPS, MAX_STEPS))


def prepared_identities(manifest: Path) -> tuple[int, int]:
    """How many training identities kept at least 2 faces after detection (a P×K batch draws from
    those), and how many faces they have; too few is an input problem, said as such."""
    import csv

    with open(manifest, newline="") as fh:
        counts: dict[str, int] = {}
        for row in csv.DictReader(fh):
            counts[row["identity"]] = counts.get(row["identity"], 0) + 1
    usable = [n for n in counts.values() if n >= MIN_PHOTOS]
    if len(usable) < 2:
        raise FaceVerifyError(f"only {len(usable)} training identities have {MIN_PHOTOS} or more photos with a "
                              "face found: add photos (or people) to fine-tune")
    return len(usable), sum(usable)


def trainable_member(model) -> int:
    """Which member fine-tuning trains: the one that is a torch network with converted weights (an
    ONNX-stored member, like SFace, stays as shipped); 0 for a single own ResNet."""
    if isinstance(model, Embedder):
        return 0
    candidates = [i for i, s in enumerate(model.specs) if s.arch in PRETRAINED_STUDENTS]
    if not candidates:
        raise FaceVerifyError(f"no member of this model can be fine-tuned (trainable: {sorted(PRETRAINED_STUDENTS)})")
    return candidates[0]


def one_member(model, member: int):
    if isinstance(model, Embedder):
        return model
    spec = model.specs[member]
    return Ensemble([model.networks[member]], [spec], [getattr(model, f"centre_{member}")])


def replace_member(model, member: int, tuned):
    if isinstance(model, Embedder):
        return tuned
    networks = list(model.networks)
    networks[member] = tuned.networks[0]
    return Ensemble(networks, model.specs, [getattr(model, f"centre_{i}") for i in range(len(networks))])


def identity_split(dataset, path: Path, val_fraction: float, seed: int, max_val_photos: int) -> dict:
    """{train: {identity: [photos]}, val: {...}}, identities disjoint; stored so a rerun keeps it.
    `val_fraction` of the identities are held out, fewer where their photos would pass
    `max_val_photos` (every pair of them is scored; the rest serve training better)."""
    if path.is_file():
        return json.loads(path.read_text())
    by_identity: dict[str, list[str]] = {}
    for sample in load_samples(dataset):
        by_identity.setdefault(sample.identity, []).append(str(sample.path.resolve()))
    usable = sorted(name for name, photos in by_identity.items() if len(photos) >= MIN_PHOTOS)
    if len(usable) < MIN_IDENTITIES:
        raise FaceVerifyError(f"{dataset}: {len(usable)} identities with at least {MIN_PHOTOS} photos; "
                              f"fine-tuning needs {MIN_IDENTITIES} or more (one sub-folder per person)")
    order = np.random.default_rng(seed).permutation(usable)
    photos = np.cumsum([len(by_identity[name]) for name in order])
    held = max(2, min(round(val_fraction * len(order)), int(np.searchsorted(photos, max_val_photos, "right"))))
    split = {"val": {n: by_identity[n] for n in sorted(order[:held])},
             "train": {n: by_identity[n] for n in sorted(order[held:])}}
    path.write_text(json.dumps(split, indent=1))
    return split


def write_manifest(people: dict, path: Path) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "identity", "split"])
        for name, photos in sorted(people.items()):
            writer.writerows([photo, name, "train"] for photo in photos)
    return path


def evaluate_model(embedder, validation: AlignedIdentities) -> dict:
    """All-pairs figures of a model on the validation identities (and its scores, for the ROC)."""
    embeddings = validation.embeddings(embedder, embedder.metadata.templates)[validation.ok]
    genuine, impostor = all_pairs_scores(embeddings, validation.labels[validation.ok])
    report = all_pairs_report(genuine, impostor, fars=(1e-2, 1e-3))
    return {"auc": report["auc"], "eer": report["eer"],
            "tar_at_far": {k: (v or {}).get("tar") for k, v in report["tar_at_far"].items()},
            "genuine_pairs": report["genuine_pairs"], "impostor_pairs": report["impostor_pairs"],
            "scores": (genuine, impostor)}


def balanced_thresholds(genuine, impostor, seed: int, source: str) -> dict:
    """Best-accuracy and FAR 1e-2 thresholds on every genuine pair and as many impostor pairs
    drawn at random (two folds), as `calibrate` computes them on a pairs file."""
    rng = np.random.default_rng(seed)
    drawn = rng.choice(impostor, size=min(len(impostor), max(len(genuine), 200)), replace=False)
    scores = np.r_[genuine, drawn]
    same = np.r_[np.ones(len(genuine), bool), np.zeros(len(drawn), bool)]
    folds = rng.integers(0, 2, len(scores))
    return calibrated_thresholds(scores, same, folds, None, source)

