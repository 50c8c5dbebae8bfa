"""`rlpt eval` end to end: a tiny Llama through the in-process engine on 5 items per benchmark."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from megatron_rlpt.cli import main
from megatron_rlpt.eval.passk import pass_at_k

from .conftest import write_gpqa_csv

PAPER = ["mmlu", "mmlu_pro", "gpqa", "kor_bench", "math500", "amc23", "aime24", "aime25"]


def _run(tmp: Path, shared_data: Path, out: str, *extra: str) -> Path:
    argv = [
        "eval",
        "--model", str(tmp / "model"),
        "--benchmarks", ",".join(PAPER),
        "--data-dir", str(shared_data / "benchmarks"),
        "--gpqa-csv", str(tmp / "gpqa.csv"),
        "--limit", "5",
        "--n", "3",
        "--k", "1,2,8",
        "--max-tokens", "12",
        "--engine", "hf",
        "--batch-size", "16",
        "--output-dir", str(tmp / out),
        *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return tmp / out


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "model").symlink_to(tiny_model_dir)
    write_gpqa_csv(tmp / "gpqa.csv")
    plain = _run(tmp, shared_data, "plain")
    chat = _run(tmp, shared_data, "chat", "--chat-template", "--seed", "1", "--limit", "3")
    return tmp, plain, chat


def test_outputs_exist_and_agree(runs) -> None:
    _, out, _ = runs
    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == PAPER
    table = (out / "results.md").read_text()
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for name, bench in results["benchmarks"].items():
        math_bench = bench["kind"] == "math"
        n = 3 if math_bench else 1
        assert (bench["n_items"], bench["n_samples"]) == (5, n)
        assert sorted(bench["scores"]) == (["pass@1", "pass@2"] if math_bench else ["pass@1"])
        rows = [json.loads(line) for line in open(out / "samples" / f"{name}.jsonl")]
        assert len(rows) == 5 * n
        assert all(
            0 < r["num_tokens"] <= 12 and r["finish_reason"] in ("stop", "length") for r in rows
        )
        # Scores recomputed from the per-sample file equal the reported ones...
        by_item: dict[str, list[bool]] = {}
        for r in rows:
            by_item.setdefault(r["id"], []).append(r["correct"])
        for k in (1, 2) if math_bench else (1,):
            want = sum(pass_at_k(n, sum(v), k) for v in by_item.values()) / len(by_item)
            assert bench["scores"][f"pass@{k}"] == pytest.approx(want)
        no_answer = sum(r["extracted"] is None for r in rows) / len(rows)
        assert bench["no_answer_rate"] == pytest.approx(no_answer)
        # ...and every reported score appears in the markdown table.
        for metric, value in bench["scores"].items():
            shown = "accuracy" if not math_bench else metric
            assert re.search(
                rf"\| {re.escape(bench['title'])} \| {shown} \| {100 * value:.1f} \| 5 \| {n} \|",
                table,
            ), (name, metric)
    assert "## KOR-Bench by category" in table
    prompts = [json.loads(line) for line in open(out / "prompts" / "kor_bench.jsonl")]
    assert all("### Rule:" in p["prompt"] for p in prompts)


def test_chat_template_is_applied(runs, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    _, plain, chat = runs
    raw = json.loads(open(plain / "prompts" / "math500.jsonl").readline())["prompt"]
    prompt = json.loads(open(chat / "prompts" / "math500.jsonl").readline())["prompt"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = tokenizer.apply_chat_template([{"role": "user", "content": raw}], tokenize=False,
                                             add_generation_prompt=True)
    assert prompt == expected and prompt != raw
    assert json.loads((chat / "results.json").read_text())["config"]["chat_template"] is True


def test_compare_mode(runs, capsys) -> None:
    tmp, plain, chat = runs
    out = tmp / "cmp"
    argv = ["eval", "--compare", str(plain), str(chat / "results.json"),
            "--labels", "Cold-Start", "RLPT", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = json.loads((out / "comparison.json").read_text())
    a = json.loads((plain / "results.json").read_text())["benchmarks"]
    b = json.loads((chat / "results.json").read_text())["benchmarks"]
    assert table["labels"] == ["Cold-Start", "RLPT"]
    assert len(table["rows"]) == 4 + 4 * 2  # accuracy rows + pass@1/pass@2 for 4 math sets
    for row in table["rows"]:
        metric = "pass@1" if row["metric"] == "accuracy" else row["metric"]
        sa, sb = a[row["benchmark"]]["scores"][metric], b[row["benchmark"]]["scores"][metric]
        assert row["scores"] == [sa, sb] and row["delta"] == [pytest.approx(sb - sa)]
    md = (out / "comparison.md").read_text()
    assert "| Benchmark | Metric | Cold-Start | RLPT | Δ RLPT − Cold-Start |" in md
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "Cold-Start" in capsys.readouterr().out


def test_usage_errors(
    tiny_model_dir: Path, shared_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    data = str(shared_data / "benchmarks")

    def err(*argv: str) -> str:
        assert main(["eval", *argv]) == 2
        return capsys.readouterr().err

    assert "--model is required" in err("--data-dir", data)
    assert "no GPQA data" in err("--model", str(tiny_model_dir), "--data-dir", data)
    assert "unknown benchmark" in err("--model", str(tiny_model_dir), "--benchmarks", "mmlu,nope")
    assert "needs --data-dir" in err("--model", str(tiny_model_dir), "--benchmarks", "aime24")
    assert "does not exist" in err(
        "--model", str(tmp_path / "none"), "--benchmarks", "aime24", "--data-dir", data
    )
    # A Megatron checkpoint directory is converted first; an incomplete one is refused.
    ckpt = tmp_path / "ckpt"
    (ckpt / "iter_0000010").mkdir(parents=True)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("10")
    message = err("--model", str(ckpt), "--benchmarks", "aime24", "--data-dir", data)
    assert "no complete checkpoint" in message
    # --engine vllm with no Python that has vLLM where it is looked for.
    monkeypatch.setenv("RLPT_VLLM_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    message = err("--model", str(tiny_model_dir), "--benchmarks", "aime24", "--data-dir", data,
                  "--engine", "vllm")  # fmt: skip
    assert "--engine vllm: vLLM: no Python at" in message and "tools/setup_vllm.sh" in message
    write_gpqa_csv(tmp_path / "gpqa.csv")
    assert "at least two runs" in err("--compare", str(tmp_path))
    assert "no results at" in err("--compare", str(tmp_path / "a"), str(tmp_path / "b"))


def test_config_file_and_flag_overrides(
    tiny_model_dir: Path, shared_data: Path, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        "benchmarks: [aime24, amc23]\n"
        f"data_dir: {shared_data / 'benchmarks'}\n"
        "n: 1\nks: [1, 4]\ntemperature: 1.0\nmax_tokens: 4\nlimit: 2\n"
    )
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--config", str(config), "--n", "4",
            "--engine", "hf", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == ["aime24", "amc23"]
    assert results["config"]["temperature"] == 1.0 and results["config"]["n"] == 4
    assert sorted(results["benchmarks"]["aime24"]["scores"]) == ["pass@1", "pass@4"]
    capsys.readouterr()
    config.write_text("benchmarks: [aime24]\nnum_samples: 3\n")
    assert main(["eval", "--model", str(tiny_model_dir), "--config", str(config)]) == 2
    assert "unknown eval config key(s): num_samples" in capsys.readouterr().err


def test_engine_choice_and_model_detection(tiny_model_dir: Path, tmp_path: Path) -> None:
    import importlib.util

    from megatron_rlpt.eval.engines import choose_engine, is_megatron_checkpoint, resolve_model

    has_vllm = importlib.util.find_spec("vllm") is not None
    has_module = importlib.util.find_spec("megatron_rlpt.rollout.vllm_engine") is not None
    assert choose_engine("auto") == ("vllm" if has_vllm and has_module else "hf")
    assert choose_engine("hf") == "hf"
    assert resolve_model(str(tiny_model_dir), tmp_path) == str(tiny_model_dir)
    assert resolve_model("Qwen/Qwen3-4B-Base", tmp_path) == "Qwen/Qwen3-4B-Base"
    step = tmp_path / "iter_0000020"
    step.mkdir()
    assert not is_megatron_checkpoint(tiny_model_dir)
    assert is_megatron_checkpoint(tmp_path)  # a root with iter_* checkpoints
    (step / "COMPLETE").write_text("")
    assert is_megatron_checkpoint(step)  # one checkpoint
