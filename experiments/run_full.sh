#!/usr/bin/env bash
# The full 4.2 + 4.7 runs, in phases ordered so that complete tables come first:
# SST-2, CoLA, RTE with seed 0 (LoRA first within each task), their 4.7 rows, then the other
# tasks, then seeds 1 and 2. Every phase resumes from the store, so rerunning this script after
# an interruption (or in a later session) continues where it stopped.
#
#   nohup nice -n 10 bash experiments/run_full.sh >> runs/reproduce/full.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { python -m pemarith.hf.reproduce_cli "$@" --threads "${THREADS:-1}"; }
run distribution-generalisation --tasks sst2,cola,rte --seeds 0
run init-analysis --tasks sst2,cola,rte --seeds 0
run distribution-generalisation --seeds 0
run init-analysis --seeds 0
run distribution-generalisation
run init-analysis
echo "all phases done: $(date)"
