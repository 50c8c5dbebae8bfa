"""Run a function on N ranks under the real `torchrun`, gloo on CPU, and collect per-rank results.

`run_multirank("tests.runtime.workers:some_fn", nproc=2, **kwargs)` launches
`torchrun --standalone --nproc-per-node N tests/multirank.py ...`; every rank imports and calls
`some_fn(**kwargs)` and writes its return value (tensors, numbers, lists, dicts) to its own file,
which the caller reads back with `torch.load(weights_only=True)`. A rank that fails or a run that
exceeds `timeout` fails the test with the ranks' output, so no test can hang.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_multirank(target: str, nproc: int = 2, timeout: float = 300, **kwargs: Any) -> list[Any]:
    """Call `module:function(**kwargs)` on `nproc` ranks; return the per-rank results in rank order."""
    with tempfile.TemporaryDirectory(prefix="rlpt-multirank-") as outdir:
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
            PYTHONWARNINGS="ignore",
        )
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", str(Path(__file__).resolve()),
            target, json.dumps(kwargs), outdir,
        ]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                                  cwd=REPO_ROOT)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"{target} on {nproc} ranks exceeded {timeout}s:\n"
                                 f"{(err.stdout or '')[-4000:]}\n{(err.stderr or '')[-4000:]}") from err
        if proc.returncode != 0:
            raise AssertionError(f"{target} on {nproc} ranks failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return [torch.load(Path(outdir) / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def _main() -> None:
    target, kwargs_json, outdir = sys.argv[1:4]
    module_name, fn_name = target.split(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    result = fn(**json.loads(kwargs_json))
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    torch.save(result, Path(outdir) / f"rank{rank}.pt")


if __name__ == "__main__":
    _main()
