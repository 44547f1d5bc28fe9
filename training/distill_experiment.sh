#!/usr/bin/env bash
# Does the dlib teacher help? The same fine-tune of the bundled model (configs/distill.yaml: stage 4
# + head, P×K 32×4) for STEPS steps, with and without the teacher, then every final.pt scored on the
# dev pairs and on every pair of LFW dev_eval (3.3M impostor pairs: TAR down to FAR 1e-6).
#   supcon-only    SupCon alone
#   distill-dlib   SupCon + dlib (cosine + relational terms, weights from the config)
# usage: training/distill_experiment.sh ALIGNED_DIR OUT_DIR [STEPS]   (ALIGNED_DIR holds the
# prepared lfw, celeba, orl and yaleb folders with teachers/dlib/, from training/teacher_embed.py).
# The two runs share the CPU, one thread each. Interrupted? Run it again: finished runs are skipped,
# unfinished ones resume; evaluations are cached in OUT_DIR.
set -euo pipefail
aligned=$1 out=$2 steps=${3:-200}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
datasets="[$aligned/lfw,$aligned/celeba,$aligned/orl,$aligned/yaleb]"
lfw=../shared/data/lfw
mkdir -p "$out"

train() {  # train RUN [overrides]
  local run=$1
  shift
  [ -f "$out/$run/summary.json" ] && return
  python training/train.py --config training/configs/distill.yaml --resume --no-progress "$@" \
    "out_dir=$out/$run" "data.datasets=$datasets" "optim.steps=$steps" optim.time_budget_min=0 \
    optim.warmup_steps=20 "data.cache_dir=$out/cache" "eval.cache=$out/dev_pairs.npz" eval.every=50 \
    checkpoint_every=25 > "$out/$run.log" 2>&1
}

train supcon-only "distill.teachers=[]" &
train distill-dlib &
wait
for run in supcon-only distill-dlib; do
  faceverify evaluate --model "$out/$run/final.pt" --pairs $lfw/pairs_dev.txt --root $lfw/images \
    --cache "$out/dev_pairs.npz" --json "$out/$run-pairs.json" --quiet
  faceverify evaluate --model "$out/$run/final.pt" --identities $lfw/manifest.csv --split dev_eval \
    --cache "$out/dev_eval.npz" --json "$out/$run-all-pairs.json" --quiet
done
