#!/usr/bin/env bash
# Download the wheels benchmarks/gpu/run.sh needs on the GPU machine, which has Python 3.12,
# torch, transformers, triton, numpy, pyyaml and no package index: megatron-core (at the version
# of constraints/ci.txt) for CPython 3.12 manylinux x86_64. Its declared needs (torch, numpy,
# packaging) and everything the GPU path imports besides are already there; the run's JSON lists
# what each section imported. Into benchmarks/gpu/wheels (git-ignored; carry it to the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=benchmarks/gpu/wheels
PIP=${PIP:-python3 -m pip}
MEGATRON_PIN=$(grep -m1 '^megatron-core==' constraints/ci.txt)
rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086  # PIP may be a command with arguments
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$DEST" "$MEGATRON_PIN"
size=$(du -sm "$DEST" | cut -f1)
if [ "$size" -ge 64 ]; then
  echo "$DEST is $size MiB: over the 64 MiB a device call may carry" >&2
  exit 1
fi
ls -l "$DEST"
echo "$DEST: ${size} MiB"
