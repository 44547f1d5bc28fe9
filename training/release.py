"""Turn a training checkpoint into a release candidate: fp16 weights (half the file), no thresholds.

The fp16 rounding moves scores slightly, so thresholds are calibrated on the written file, then it
is exported (the ONNX file carries the same weights hash and metadata):
    python training/release.py runs/x/best.pt weights/faceverify-default.pt
    faceverify calibrate --model weights/faceverify-default.pt --pairs PAIRS --root ROOT [--flip]
    faceverify calibrate --model weights/faceverify-default.pt --identities MANIFEST --split dev_eval [--flip]
    faceverify export weights/faceverify-default.pt weights/faceverify-default.onnx
"""
from __future__ import annotations

import argparse

from faceverify.models import load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a training run's best.pt or final.pt")
    parser.add_argument("out", help="the release checkpoint to write (.pt)")
    args = parser.parse_args()
    model, metadata = load_checkpoint(args.checkpoint)
    written = save_checkpoint(args.out, model, training=metadata.training, half=True)
    print(f"{args.out}: {written.arch}, fp16 weights {written.short_hash}; calibrate it next")


if __name__ == "__main__":
    main()
