"""Pack prepared datasets into WebP `.npz` chunks (~1.8 kB a face) to move a training set between
machines: `python training/pack.py OUT_PREFIX DATASET... [--teacher dlib mobilefacenet]`; train
with `data.datasets=[OUT-*.npz]` (and `distill.teachers=[...]` for the teachers packed with it).
"""
from __future__ import annotations

import argparse

from faceverify.train.face_array import load_face_array, pack_face_array
from faceverify.train.teachers import TEACHER_FACTORIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_prefix")
    parser.add_argument("datasets", nargs="+", help="folders written by `faceverify prepare`")
    parser.add_argument("--teacher", nargs="+", default=[], choices=sorted(TEACHER_FACTORIES),
                        help="also pack these teachers' embeddings (training/teacher_embed.py)")
    parser.add_argument("--max-mb", type=int, default=56, help="bytes per pack (crops + embeddings)")
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--min-images", type=int, default=2)
    args = parser.parse_args()
    faces = load_face_array(args.datasets, min_images=args.min_images, teachers=args.teacher)
    for path in pack_face_array(faces, args.out_prefix, args.max_mb << 20, args.quality):
        print(path)


if __name__ == "__main__":
    main()
