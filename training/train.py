"""Train an embedder: `python training/train.py --config training/configs/X.yaml [key=value ...]`.

Self-supervised pretraining then fine-tuning: `--config configs/simclr.yaml` (or moco.yaml), then
`--config configs/cpu.yaml --init-from RUN/final.pt`.

Thin recipe entry over `faceverify.train`; runs the same under `torchrun --nproc_per_node N`.
"""
from __future__ import annotations

import argparse
import json

from faceverify.train import Trainer, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (training/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/state.pt")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start from this checkpoint's embedder, e.g. a simclr/moco run's final.pt")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.steps=2000")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if args.init_from:
        cfg.init_from = args.init_from
    summary = Trainer(cfg, resume=args.resume, progress=not args.no_progress).fit()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
