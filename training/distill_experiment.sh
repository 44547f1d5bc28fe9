#!/usr/bin/env bash
# Does distillation help, at equal compute? The same fine-tune of the bundled model
# (configs/distill.yaml: stem + stages 1-2 frozen, P×K 32×4, one core each, side by side for the
# same time budget) with and without teachers, then each run's best.pt and final.pt scored on the
# dev pairs and on every pair of LFW dev_eval (3.3M impostor pairs: TAR down to FAR 1e-6).
#   supcon         SupCon alone
#   dlib           SupCon + dlib (public domain: the student inherits no restriction)
#   both           SupCon + dlib + MobileFaceNet (non-commercial research: the student inherits it)
# usage: training/distill_experiment.sh ALIGNED_DIR OUT_DIR [MINUTES] [RUNS...]
#   ALIGNED_DIR holds the prepared lfw, celeba, orl, yaleb and extra folders, each with teachers/
#   from training/teacher_embed.py; RUNS defaults to "supcon both" (run "dlib" too where there
#   are cores for it). Interrupted? Run it again: finished runs are skipped, unfinished ones resume;
#   evaluations are cached in OUT_DIR.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 ALIGNED_DIR OUT_DIR [MINUTES] [RUNS...]   (runs: supcon dlib both)" >&2
  exit 2
fi
aligned=$1 out=$2 minutes=${3:-100}
if [ $# -gt 3 ]; then runs=("${@:4}"); else runs=(supcon both); fi
declare -A teachers=([supcon]="[]" [dlib]="[dlib]" [both]="[mobilefacenet,dlib]")
for run in "${runs[@]}"; do
  [[ -v teachers[$run] ]] || { echo "$0: unknown run '$run' (supcon, dlib or both)" >&2; exit 2; }
done
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
datasets="[$aligned/lfw,$aligned/celeba,$aligned/orl,$aligned/yaleb,$aligned/extra]"
lfw=../shared/data/lfw
mkdir -p "$out"

train() {  # train RUN
  local run=$1
  [ -f "$out/$run/summary.json" ] && return
  python training/train.py --config training/configs/distill.yaml --resume --no-progress \
    "out_dir=$out/$run" "data.datasets=$datasets" "distill.teachers=${teachers[$run]}" \
    "optim.time_budget_min=$minutes" "data.cache_dir=$out/cache" "eval.cache=$out/dev_pairs.npz" \
    > "$out/$run.log" 2>&1
}

pids=()
for run in "${runs[@]}"; do train "$run" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed run stops the script (its log says why)
for run in "${runs[@]}"; do
  for checkpoint in best final; do
    faceverify evaluate --model "$out/$run/$checkpoint.pt" --pairs $lfw/pairs_dev.txt --root $lfw/images \
      --cache "$out/dev_pairs.npz" --json "$out/$run-$checkpoint-pairs.json" --quiet
    faceverify evaluate --model "$out/$run/$checkpoint.pt" --identities $lfw/manifest.csv --split dev_eval \
      --cache "$out/dev_eval.npz" --json "$out/$run-$checkpoint-all-pairs.json" --quiet
  done
done
