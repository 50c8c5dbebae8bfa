"""The fidelity experiment's pure parts (benchmarks/fidelity.py): the document split, the
held-out sample, the judges' agreement rate, the seed summary and the report block. The run
itself (SmolLM2 through convert, prepare, SFT, three RLPT/pretrain arms, export and a vLLM judge)
takes longer than a test may; `python benchmarks/fidelity.py --smoke` runs it end to end."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.multirank import REPO_ROOT


def _fidelity():
    spec = importlib.util.spec_from_file_location("fidelity", REPO_ROOT / "benchmarks" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fidelity = _fidelity()


def test_split_depends_on_the_id_alone(shared_data):
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    train, held = fidelity.split_documents(docs, 0.25)
    assert {d["id"] for d in train}.isdisjoint(d["id"] for d in held)
    assert len(train) + len(held) == len(docs)
    assert 0.15 < len(held) / len(docs) < 0.35
    # Reversed order, a subset: every document stays on its side.
    train2, held2 = fidelity.split_documents(docs[::-1][:60], 0.25)
    side = {d["id"]: "train" for d in train} | {d["id"]: "held" for d in held}
    assert all(side[d["id"]] == "train" for d in train2)
    assert all(side[d["id"]] == "held" for d in held2)


def test_split_refuses_an_empty_side():
    with pytest.raises(SystemExit, match="empty"):
        fidelity.split_documents([{"id": "only-one"}], 0.25)


def test_heldout_indices_spread_and_bounded():
    assert fidelity.heldout_indices(100, 4) == [0, 25, 50, 75]
    assert fidelity.heldout_indices(3, 10) == [0, 1, 2]
    with pytest.raises(SystemExit):
        fidelity.heldout_indices(0, 4)


def test_agreement_counts_only_items_both_judges_scored():
    rate, n = fidelity.agreement([1.0, 0.0, 1.0, None, 0.0], [1.0, 1.0, None, 1.0, 0.0])
    assert n == 3 and rate == pytest.approx(2 / 3)
    rate, n = fidelity.agreement([None], [1.0])
    assert n == 0 and rate != rate  # NaN: nothing to compare


def _result() -> dict:
    def ev(reward: float, nll: float) -> dict:
        return {"reward_judge": reward, "reward_rule": reward / 2, "agreement": 0.75, "nll": nll,
                "triples": [0, 5, 10]}

    evals = {"warmup": ev(0.1, 3.0), "prefix/seed1": ev(0.3, 2.9), "prefix/seed2": ev(0.5, 2.8),
             "strict/seed1": ev(0.2, 2.95), "strict/seed2": ev(0.2, 2.9),
             "pretrain/seed1": ev(0.1, 2.5), "pretrain/seed2": ev(0.15, 2.6)}
    arms, seeds = ["prefix", "strict", "pretrain"], [1, 2]
    return {
        "settings": {**fidelity.FULL, "arms": arms, "rollout_engine": "megatron",
                     "train_judge": "rule", "eval_judge": "http", "smoke": False},
        "split": {"train_ids": ["a", "b", "c"], "heldout_ids": ["d"]},
        "runs": {f"{a}/seed{s}": {"trained_tokens": 1000.0} for a in arms for s in seeds},
        "eval": evals, "summary": fidelity.summarize(evals, arms, seeds),
        "total_wall_s": 3600.0,
        "meta": {"command": "python benchmarks/fidelity.py", "commit": "abc", "date": "today",
                 "cpu_count": 2},
    }


def test_summary_mean_and_spread_over_seeds():
    s = _result()["summary"]
    assert s["prefix"]["reward_judge"]["mean"] == pytest.approx(0.4)
    assert s["prefix"]["reward_judge"]["std"] == pytest.approx(0.1414, abs=1e-3)
    assert s["prefix"]["reward_judge"]["per_seed"] == [0.3, 0.5]
    assert s["warmup"]["nll"]["std"] is None  # one model, no spread


def test_report_block_holds_every_arm():
    block = fidelity.render_fidelity(_result())
    for label in ("format warm-up", "RLPT, prefix reward", "RLPT, strict reward",
                  "next-token continued pre-training"):
        assert label in block
    assert "0.400 ± 0.141" in block and "1,000" in block
    text = "a\n<!-- generated:fidelity -->\nold\n<!-- /generated:fidelity -->\nb\n"
    new = fidelity.replace_block(text, block)
    assert "old" not in new and block.strip() in new and new.endswith("b\n")


def test_report_block_fails_on_an_empty_table():
    r = _result()
    r["summary"] = {}
    with pytest.raises(ValueError, match="no rows"):
        fidelity.render_fidelity(r)


def test_smoke_results_are_never_rendered_into_the_docs(tmp_path):
    r = _result()
    r["settings"]["smoke"] = True
    path = tmp_path / "fidelity_smoke.json"
    path.write_text(json.dumps(r))
    with pytest.raises(SystemExit, match="smoke"):
        fidelity.render_report(path)


def test_the_docs_have_the_generated_block():
    text = (REPO_ROOT / "docs" / "experiments.md").read_text()
    assert "<!-- generated:fidelity -->" in text and "python benchmarks/fidelity.py" in text


def test_report_counts_items_the_generative_judge_could_not_judge():
    r = _result()
    for key in ("prefix/seed1", "prefix/seed2"):
        r["eval"][key]["judge_failed"] = 2
    r["summary"] = fidelity.summarize(r["eval"], ["prefix", "strict", "pretrain"], [1, 2])
    r["judge_probe"] = {"true_segment": None, "unrelated": 0.0}
    block = fidelity.render_fidelity(r)
    assert "(2 of 3 unjudged)" in block and "true s_i scored None" in block
