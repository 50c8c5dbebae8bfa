"""An RL training step gives the same loss and gradient norm at TP=2, PP=2 and DP=2 as at TP=1."""

from __future__ import annotations

import pytest

from tests.multirank import run_multirank

pytestmark = pytest.mark.multirank


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("rl-ref")
    run_multirank("tests.runtime.workers:save_reference", nproc=1, ckpt=str(ckpt), arch="qwen3")
    single = run_multirank("tests.train.workers:rl_train_step", nproc=1, ckpt=str(ckpt),
                           tp=1, pp=1)[0]
    return str(ckpt), single


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (1, 1)], ids=["tp2", "pp2", "dp2"])
def test_rl_step_matches_single_rank(reference, tp, pp):
    ckpt, single = reference
    assert single["clip_frac"] > 0  # the fixed batch exercises clipping
    for rank in run_multirank("tests.train.workers:rl_train_step", nproc=2, ckpt=ckpt, tp=tp, pp=pp):
        assert rank["loss"] == pytest.approx(single["loss"], abs=1e-5)
        assert rank["grad_norm"] == pytest.approx(single["grad_norm"], abs=1e-5)
