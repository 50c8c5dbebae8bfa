"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RLPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test data (`../shared/data` beside the checkout; CI has it)."""
    if not SHARED_DATA.is_dir():
        raise RuntimeError(
            f"shared test data not found at {SHARED_DATA}; set RLPT_SHARED_DATA to its path"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def quickstart_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped quickstart corpus through `rlpt prepare` at default settings, once a session
    (what `examples/quickstart_cpu.yaml` trains on)."""
    from megatron_rlpt.data.pipeline import prepare
    from megatron_rlpt.quickstart import CORPUS

    out = tmp_path_factory.mktemp("quickstart_prepared") / "data"
    prepare([str(CORPUS)], out, progress=False)
    return out
