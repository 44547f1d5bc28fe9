"""Assemble a model file from pretrained members: dlib's ResNet (public domain) and SFace (Apache-2.0).

    python training/build_default.py --sface SFACE.onnx --weights sface=0.7,dlib=0.3 \
        [--dlib-centre WORK/dlib-centre.npy] [--flip] --out weights/faceverify-default.pt

`--weights` names the members and their weights (one member alone is a model too); the choice and
the dlib centre come from `training/select_ensemble.py`. dlib's weights are stored in fp16 (half
the file; the embeddings move by < 1e-3 in cosine, measured there), SFace as its repaired int8
graph. Then calibrate and export:

    faceverify calibrate --model OUT.pt --pairs ../shared/data/lfw/pairs_dev.txt --root ../shared/data/lfw/images
    faceverify calibrate --model OUT.pt --identities ../shared/data/lfw/manifest.csv --split dev_eval
    faceverify export OUT.pt OUT.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from faceverify.models import Ensemble, save_checkpoint
from faceverify.models.members import dlib_member, sface_member


def members(sface: Path) -> dict:
    """name → (network, spec) for every available member."""
    return {"dlib": dlib_member(), "sface": sface_member(sface)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sface", required=True, type=Path)
    parser.add_argument("--weights", required=True, help="e.g. sface=0.7,dlib=0.3")
    parser.add_argument("--dlib-centre", type=Path, help="mean dlib unit embedding of training faces (.npy)")
    parser.add_argument("--flip", action="store_true", help="thresholds will be calibrated with flip")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    available = members(args.sface)
    weights = {name: float(w) for name, w in (item.split("=") for item in args.weights.split(","))}
    chosen = [available[name] for name in weights]
    specs = [spec for _, spec in chosen]
    for spec in specs:
        spec.weight = weights[spec.name]
    centres = [None] * len(specs)
    if args.dlib_centre and "dlib" in weights:
        centres[list(weights).index("dlib")] = torch.from_numpy(np.load(args.dlib_centre).astype(np.float32))
        specs[list(weights).index("dlib")].extra["centred_on"] = (
            "mean dlib unit embedding of the LFW train split (training/select_ensemble.py)")
    model = Ensemble([network for network, _ in chosen], specs, centres).eval()
    training = {"recipe": "training/build_default.py: pretrained members, no training by faceverify",
                "selection": "training/select_ensemble.py on the LFW dev pairs and dev_eval all pairs"}
    metadata = save_checkpoint(args.out, model, training=training, half=True, flip=args.flip)
    print(f"{args.out}: {metadata.arch} of {[s.name for s in model.specs]}, weights "
          f"{[round(s.weight, 3) for s in model.specs]}, dim {metadata.embedding_dim}, "
          f"sha {metadata.short_hash}, {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
