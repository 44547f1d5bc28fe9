"""Re-align a prepared set to another template without detecting again (from the landmarks
`prepare` recorded): `python training/realign.py PREPARED SOURCE DEST --template dlib-150`.

SOURCE is what `faceverify prepare` read (manifest.csv or image folder). DEST gets the same
manifest and crop names, so teacher embeddings keyed by crop path apply to both. Rerun to resume.
"""
from __future__ import annotations

import argparse

from faceverify.align import TEMPLATES
from faceverify.prepare import realign_prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared")
    parser.add_argument("source")
    parser.add_argument("dest")
    parser.add_argument("--template", required=True, choices=sorted(TEMPLATES))
    args = parser.parse_args()
    written = realign_prepared(args.prepared, args.source, args.dest, TEMPLATES[args.template])
    print(f"{written} crops aligned to {args.template} -> {args.dest}")


if __name__ == "__main__":
    main()
