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
