#!/usr/bin/env bash
# Does self-supervised pretraining help? Three runs of equal compute (TOTAL steps of 128 crops):
#   scratch         triplet (configs/cpu.yaml) on the labelled sets for TOTAL steps
#   simclr-triplet  SimCLR on every set, labels ignored (+ the extra set), TOTAL/2 steps,
#                   then the same triplet recipe from its weights for TOTAL/2 steps
#   moco-triplet    the same with MoCo
#   byol-triplet    the same with BYOL (no negatives: online + predictor regress an EMA target)
#   swav-triplet    the same with SwAV (swapped prediction of Sinkhorn codes over prototypes)
# and controls: scratch-half, the triplet recipe for TOTAL/2 steps alone (what the fine-tuning
# budget gives without pretraining); memory-bank, the triplet recipe for TOTAL steps with negatives
# also mined from a queue of 8,192 labelled embeddings (objective.memory_bank).
# usage: training/ssl_experiment.sh ALIGNED_DIR OUT_DIR [TOTAL]   (ALIGNED_DIR holds the prepared
# lfw, celeba, orl, yaleb and extra folders; CACHE=dir shares decoded crops between runs;
# MODES="byol swav" runs only those pretraining modes (MODES="" none), CONTROLS=0 skips the
# supervised runs).
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

if [ "${CONTROLS:-1}" = 1 ]; then
  # the supervised rows, two at a time (one core each): triplet, and triplet whose negatives are
  # also mined from a memory bank of the last 8,192 labelled embeddings
  train scratch cpu "$labelled" "$total" &
  train memory-bank cpu "$labelled" "$total" objective.memory_bank=8192 &
  wait
  train scratch-half cpu "$labelled" "$half"
fi
plots=()
for run in scratch memory-bank scratch-half; do [ -d "$out/$run" ] && plots+=("$out/$run"); done
for mode in ${MODES-simclr moco byol swav}; do
  train "$mode" "$mode" "$unlabelled" "$half"
  train "$mode-triplet" cpu "$labelled" "$half" --init-from "$out/$mode/final.pt"
  plots+=("$out/$mode" "$out/$mode-triplet@$half")
done
python training/plot_runs.py "$out/ssl-experiment.png" "${plots[@]}"
