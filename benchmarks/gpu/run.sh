#!/usr/bin/env bash
# GPU acceptance run: the Megatron path on CUDA in bf16 (train step, dist-checkpoint save/load,
# RL step with in-process rollouts, MFU, decode tokens/s, log-prob memory), one section per
# process, each with its own time limit; about 6 minutes on one H200 at most.
#
#   bash benchmarks/gpu/run.sh [--cpu-dry-run] [--out DIR] [--only SECTION,...]
#
# Uses the machine's own python3 and torch (PYTHON overrides). Packages it lacks come from the
# wheels that tools/download_gpu_wheels.sh put in benchmarks/gpu/wheels (pip --no-index into a
# target directory, so nothing of the machine's is replaced); none are needed where megatron-core
# already imports. Writes DIR/gpu.json and DIR/gpu.md (default: $OUT/gpu where OUT is set, else
# benchmarks/results/gpu). --cpu-dry-run runs the same code on tiny models on the CPU (CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELS=benchmarks/gpu/wheels
out_dir="${OUT:+$OUT/gpu}"
out_dir="${out_dir:-benchmarks/results/gpu}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out_dir="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

if ! "$PYTHON" -c "import megatron.core" 2>/dev/null; then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "megatron-core is not installed and $WHEELS holds no wheels:" \
         "run tools/download_gpu_wheels.sh on a machine with a package index first" >&2
    exit 2
  fi
  site=$(mktemp -d -t rlpt-gpu-site-XXXXXX)
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$site" "$WHEELS"/*.whl
  else  # no pip: a wheel is a zip of what goes on the path
    for w in "$WHEELS"/*.whl; do "$PYTHON" -m zipfile -e "$w" "$site"; done
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed into $site:" "$WHEELS"/*.whl
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
mkdir -p "$out_dir"
exec "$PYTHON" benchmarks/gpu/bench.py --out "$out_dir" ${args[@]+"${args[@]}"}
