#!/usr/bin/env bash
# The full reproduction runs, in two lanes that each keep one CPU core busy (torch 1 thread),
# balanced so that each lane finishes an issue's settings before it starts the next issue's:
#
#   minilm   4.2 + 4.7 on MiniLM, in phases ordered so that complete tables come first: SST-2,
#            CoLA, RTE with seed 0, their 4.7 rows, then the other tasks; then 4.3 multitask on
#            SmolLM2 (the rest of the same issue); then seed 1 of 4.2 and 4.7.
#   smollm2  4.6 detox-instruct, 4.4 unlearning, then 4.5 domain transfer (SmolLM2, then the
#            larger Gemma 3 270M); then seed 2 of 4.2 and 4.7, into side directories
#            (runs/reproduce/*-seed2), so that the lanes never write the same results.json; then,
#            once the minilm lane has finished (runs/reproduce/minilm.done), it assembles all
#            seeds of 4.2 and 4.7 into their main results (everything cached: minutes).
#
# The lanes never train or sweep the same unit (the store keys modules and sweeps by seed and
# init seed); an evaluation both might need is one JSON file written atomically, so at worst it is
# computed twice. Every phase resumes from the store (runs/reproduce/store), so rerunning a
# lane after an interruption, or in a later session, continues where it stopped and skips
# finished work.
#
#   setsid nohup nice -n 10 bash experiments/run_full.sh minilm  >> runs/reproduce/minilm.log 2>&1 &
#   setsid nohup nice -n 10 bash experiments/run_full.sh smollm2 >> runs/reproduce/smollm2.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { echo "=== $(date +%H:%M:%S) reproduce $*"; python -m pemarith reproduce "$@" --threads "${THREADS:-1}"; }
done_marker=runs/reproduce/minilm.done

lane=${1:-minilm}
case "$lane" in
  minilm)
    rm -f "$done_marker"
    run distribution-generalisation --tasks sst2,cola,rte --seeds 0
    run init-analysis --tasks sst2,cola,rte --seeds 0
    run distribution-generalisation --seeds 0
    run init-analysis --seeds 0
    run multitask
    run distribution-generalisation --seeds 0 1
    run init-analysis --seeds 0 1
    date > "$done_marker"
    ;;
  smollm2)
    run detox-instruct
    run unlearning
    run domain-transfer
    run domain-transfer-gemma3
    run distribution-generalisation --seeds 2 --out runs/reproduce/distribution-generalisation-seed2
    run init-analysis --seeds 2 --out runs/reproduce/init-analysis-seed2
    while [ ! -e "$done_marker" ]; do
      echo "=== $(date +%H:%M:%S) waiting for the minilm lane to finish seed 1 ($done_marker)"
      sleep 600
    done
    run distribution-generalisation
    run init-analysis
    ;;
  *) echo "usage: $0 minilm|smollm2" >&2; exit 2 ;;
esac
echo "=== lane $lane: all phases done: $(date)"
