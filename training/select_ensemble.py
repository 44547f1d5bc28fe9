"""Choose the default model among pretrained members and their weighted ensembles.

Candidates: each member alone, dlib's embeddings centred or not, weighted means of the two members'
cosines (SFace's weight 0.5 … 0.9, and z-norm weights = inverse impostor spread), each with and
without test-time flip. Every candidate is scored exactly as `Verifier` would score it (ensemble
embedding = `models.ensemble.combine`; flip = mean of the face's and its mirror's embeddings) on
the LFW dev pairs (2-fold accuracy, AUC) and on every pair of the `dev_eval` identities (TAR at
FAR 1e-3 … 1e-6). Nothing else is looked at: the held-back sets stay blind.

    python training/select_ensemble.py --sface SFACE.onnx --work ~/faceverify-data/select

Writes WORK/candidates.json and prints a markdown table. The dlib centre is the mean of dlib's unit
embeddings over the LFW `train` split (WORK/dlib-centre.npy), never over evaluation photos.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from faceverify.align import ARCFACE_112, DLIB_150
from faceverify.data import load_samples, read_pairs
from faceverify.detect import OnnxMTCNN
from faceverify.evaluation import AlignedIdentities, AlignedPairs, all_pairs_scores
from faceverify.metrics import all_pairs_report, verification_report
from faceverify.models.dlib_resnet import DlibResNet
from faceverify.models.ensemble import OnnxGraphNetwork, combine
from faceverify.models.sface import load_checked

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
TEMPLATES = (ARCFACE_112, DLIB_150)
FARS = ("0.001", "0.0001", "1e-05", "1e-06")


@torch.inference_mode()
def unit_embeddings(network, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(crops), batch):
        x = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch])).permute(0, 3, 1, 2).float()
        out.append(torch.nn.functional.normalize(network(x).float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def cached(path: Path, build):
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    value = build()
    np.savez(path, **value)
    return value


def member_vectors(networks: dict, aligned, work: Path, tag: str) -> dict:
    """{member: unit embeddings}, and "<member>/flip" for mirrored crops, of the usable crops."""
    crops = dict(zip(("sface", "dlib"), aligned.crops_for(TEMPLATES)))

    def build():
        out = {}
        for name, network in networks.items():
            usable = crops[name][aligned.ok]
            out[name] = unit_embeddings(network, usable)
            out[f"{name}/flip"] = unit_embeddings(network, usable[:, :, ::-1])
        return out

    return cached(work / f"{tag}-members.npz", build)


def candidate_vectors(vectors: dict, weights: dict, centre: np.ndarray | None, flip: bool) -> np.ndarray:
    def members(suffix=""):
        parts = []
        for name in weights:
            v = vectors[name + suffix]
            if name == "dlib" and centre is not None:
                v = v - centre
                v = v / np.linalg.norm(v, axis=1, keepdims=True)
            parts.append(v)
        return combine(parts, list(weights.values()))

    embedding = members()
    if flip:
        embedding = embedding + members("/flip")
        embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    return embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sface", required=True, type=Path, help="the SFace ONNX file (checked by sha256)")
    parser.add_argument("--work", required=True, type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    networks = {"sface": OnnxGraphNetwork(load_checked(args.sface)).eval(), "dlib": DlibResNet.from_dat().eval()}
    detector = OnnxMTCNN()

    def aligned(kind, path, build):
        if path.is_file():
            return kind.load(path)
        value = build()
        value.save(path)
        return value

    pairs = aligned(AlignedPairs, args.work / "dev-pairs.npz", lambda: AlignedPairs.build(
        read_pairs(DATA / "pairs_dev.txt", DATA / "images"), detector, templates=TEMPLATES))
    dev_eval = aligned(AlignedIdentities, args.work / "dev-eval.npz", lambda: AlignedIdentities.build(
        load_samples(DATA / "manifest.csv", "dev_eval"), detector, templates=TEMPLATES))
    centre_path = args.work / "dlib-centre.npy"
    if not centre_path.is_file():
        train = AlignedIdentities.build(load_samples(DATA / "manifest.csv", "train"), detector,
                                        templates=(DLIB_150,))
        vectors = unit_embeddings(networks["dlib"], train.crops[0][train.ok])
        np.save(centre_path, vectors.mean(axis=0))
    centre = np.load(centre_path)
    pair_vectors = member_vectors(networks, pairs, args.work, "dev-pairs")
    eval_vectors = member_vectors(networks, dev_eval, args.work, "dev-eval")
    spread = {name: float(np.std(all_pairs_scores(eval_vectors[name], dev_eval.labels[dev_eval.ok])[1]))
              for name in networks}

    candidates = [("sface", {"sface": 1.0}, None), ("dlib", {"dlib": 1.0}, None),
                  ("dlib centred", {"dlib": 1.0}, centre)]
    for w in (0.5, 0.6, 0.7, 0.8, 0.9):
        candidates.append((f"sface {w} + dlib {1 - w:.1f}", {"sface": w, "dlib": 1 - w}, None))
        candidates.append((f"sface {w} + dlib centred {1 - w:.1f}", {"sface": w, "dlib": 1 - w}, centre))
    znorm = {name: 1 / spread[name] for name in networks}
    candidates.append(("z-norm weights (1/impostor sd)", znorm, None))
    rows = []
    print("| candidate | flip | dev accuracy % | dev AUC | all-pairs AUC | "
          + " | ".join(f"TAR@{far}" for far in FARS) + " |\n|" + "---|" * (5 + len(FARS)))
    for name, weights, centred in candidates:
        for flip in (False, True):
            usable = np.flatnonzero(pairs.ok)
            found = candidate_vectors(pair_vectors, weights, centred, flip)
            embedding = np.zeros((len(pairs.ok), found.shape[1]), np.float32)
            embedding[usable] = found
            scores = np.sum(embedding[pairs.left] * embedding[pairs.right], axis=1)
            valid = pairs.ok[pairs.left] & pairs.ok[pairs.right]
            dev = verification_report(scores, pairs.same, pairs.folds, valid)
            genuine, impostor = all_pairs_scores(candidate_vectors(eval_vectors, weights, centred, flip),
                                                 dev_eval.labels[dev_eval.ok])
            report = all_pairs_report(genuine, impostor)
            rows.append({"name": name, "weights": {k: float(v) for k, v in weights.items()},
                         "centred": centred is not None, "flip": flip,
                         "dev_accuracy": dev.accuracy_mean, "dev_std": dev.accuracy_std, "dev_auc": dev.auc,
                         "all_pairs_auc": report["auc"], "all_pairs_eer": report["eer"],
                         **{f"tar@{far}": (report["tar_at_far"].get(far) or {}).get("tar") for far in FARS}})
            r = rows[-1]
            print(f"| {name} | {'flip' if flip else '-'} | {100 * r['dev_accuracy']:.2f} ± {100 * r['dev_std']:.2f} "
                  f"| {r['dev_auc']:.4f} | {r['all_pairs_auc']:.5f} | "
                  + " | ".join(f"{r[f'tar@{far}']:.4f}" for far in FARS) + " |", flush=True)
    (args.work / "candidates.json").write_text(json.dumps({"impostor_sd": spread, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
