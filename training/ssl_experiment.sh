#!/usr/bin/env bash
# Does self-supervised pretraining help? Three runs of equal compute (TOTAL steps of 128 crops):
#   scratch         triplet (configs/cpu.yaml) on the labelled sets for TOTAL steps
#   simclr-triplet  SimCLR on every set, labels ignored (+ the extra set), TOTAL/2 steps,
#                   then the same triplet recipe from its weights for TOTAL/2 steps
#   moco-triplet    the same with MoCo
# and a control, scratch-half: the triplet recipe for TOTAL/2 steps alone (what the fine-tuning
# budget gives without pretraining).
# usage: training/ssl_experiment.sh ALIGNED_DIR OUT_DIR [TOTAL]   (ALIGNED_DIR holds the prepared
# lfw, celeba, orl, yaleb and extra folders; CACHE=dir shares decoded crops between runs).
# Interrupted? Run it again: finished runs are skipped, unfinished ones resume.
set -euo pipefail
aligned=$1 out=$2 total=${3:-600}
half=$((total / 2)) cache=${CACHE:-$out/cache}
labelled="[$aligned/lfw,$aligned/celeba,$aligned/orl,$aligned/yaleb]"
unlabelled="[$aligned/lfw,$aligned/celeba,$aligned/orl,$aligned/yaleb,$aligned/extra]"

train() {  # train RUN CONFIG DATASETS STEPS [extra args]
  local run=$1 config=$2 datasets=$3 steps=$4
  shift 4
  [ -f "$out/$run/summary.json" ] && return
  python training/train.py --config "training/configs/$config.yaml" --resume --no-progress "$@" \
    "out_dir=$out/$run" "data.datasets=$datasets" "optim.steps=$steps" optim.time_budget_min=0 \
    "data.cache_dir=$cache" "eval.cache=$cache/dev_pairs.npz" eval.every=150 checkpoint_every=150
}

train scratch cpu "$labelled" "$total"
train scratch-half cpu "$labelled" "$half"
for mode in simclr moco; do
  train "$mode" "$mode" "$unlabelled" "$half"
  train "$mode-triplet" cpu "$labelled" "$half" --init-from "$out/$mode/final.pt"
done
python training/plot_runs.py "$out/ssl-experiment.png" "$out/scratch" "$out/simclr" \
  "$out/simclr-triplet@$half" "$out/moco" "$out/moco-triplet@$half" "$out/scratch-half"
