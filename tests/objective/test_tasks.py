"""Prompts, extraction, λ mixing and judge references."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from megatron_rlpt.errors import UsageError
from megatron_rlpt.reward.prompts import PREFIX_JUDGE_TEMPLATE, judge_template
from megatron_rlpt.tasks import (
    ASR_TEMPLATE,
    END_TAG,
    MSR_TEMPLATE,
    START_TAG,
    ExtractStatus,
    Task,
    TaskConfig,
    Templates,
    assign_tasks,
    build_reference,
    extract_prediction,
    fill_template,
    msr_probability,
    render_prompt,
    task_loss_weight,
)


def _spec_blocks(shared_data: Path) -> list[str]:
    spec = (shared_data.parent / "RLPT_SPEC.md").read_text(encoding="utf-8")
    return re.findall(r"^```\n(.*?)\n```$", spec, re.DOTALL | re.MULTILINE)


def test_default_prompts_equal_the_spec_byte_for_byte(shared_data: Path) -> None:
    blocks = _spec_blocks(shared_data)
    asr = next(b for b in blocks if b.startswith("Complete the text provided under ### Context"))
    msr = next(b for b in blocks if b.startswith("## Text Material ##"))
    judge = next(b for b in blocks if b.startswith("## Task\nGiven a Predicted sentence"))
    assert ASR_TEMPLATE.encode() == asr.encode()
    assert MSR_TEMPLATE.encode() == msr.encode()
    assert PREFIX_JUDGE_TEMPLATE.encode() == judge.encode()
    assert judge_template("prefix") == judge
    assert Templates.from_config(TaskConfig()) == Templates(asr=asr, msr=msr)


def test_rendered_prompts_fill_the_placeholders_only() -> None:
    cfg = TaskConfig()
    context = ["Let $f(x) = {x}^2$.", "Its derivative is {next_step}."]
    asr = render_prompt(Task.ASR, context, "unused", cfg)
    assert asr == ASR_TEMPLATE.replace("{context}", " ".join(context))
    msr = render_prompt(Task.MSR, "Ctx {prompt}", "Next $\\frac{1}{2}$.", cfg)
    expected = MSR_TEMPLATE.replace("{prompt}", "Ctx {prompt}", 1)
    expected = expected.replace("{next_step}", "Next $\\frac{1}{2}$.")
    assert msr == expected
    # A placeholder inside an inserted value is not expanded a second time.
    assert fill_template("{a}|{b}", {"a": "{b}", "b": "x"}) == "{b}|x"


def test_templates_from_files(tmp_path: Path) -> None:
    asr_file = tmp_path / "asr.txt"
    asr_file.write_text(ASR_TEMPLATE + "\n", encoding="utf-8")  # editors add a newline
    msr_file = tmp_path / "msr.txt"
    msr_file.write_text("Before {prompt} [MASK] {next_step} after", encoding="utf-8")
    cfg = TaskConfig(asr_template_file=str(asr_file), msr_template_file=str(msr_file))
    templates = Templates.from_config(cfg)
    assert templates.asr == ASR_TEMPLATE
    assert render_prompt(Task.MSR, "A.", "C.", cfg, templates) == "Before A. [MASK] C. after"
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholders here", encoding="utf-8")
    with pytest.raises(UsageError, match="next_step"):
        Templates.from_config(TaskConfig(msr_template_file=str(bad)))
    with pytest.raises(UsageError, match="cannot read"):
        Templates.from_config(TaskConfig(asr_template_file=str(tmp_path / "absent.txt")))


class _ChatTokenizer:
    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
        assert tokenize is False and add_generation_prompt is True
        turns = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return turns + "<assistant>" + "".join(f"[{k}={v}]" for k, v in kwargs.items())


def test_chat_wrapping() -> None:
    cfg = TaskConfig(chat_template=True, system_prompt="Be brief.",
                     chat_template_kwargs={"enable_thinking": False})
    text = render_prompt(Task.ASR, "Ctx.", "", cfg, tokenizer=_ChatTokenizer())
    raw = ASR_TEMPLATE.replace("{context}", "Ctx.")
    assert text == f"<system>Be brief.</system><user>{raw}</user><assistant>[enable_thinking=False]"
    with pytest.raises(UsageError):
        render_prompt(Task.ASR, "Ctx.", "", cfg)  # no tokenizer


@pytest.mark.parametrize(
    ("text", "prediction", "status", "starts"),
    [
        (f"Reasoning... {START_TAG} The answer. {END_TAG}", "The answer.", ExtractStatus.OK, 1),
        ("No tags at all.", None, ExtractStatus.MISSING, 0),
        (f"Only an end tag {END_TAG}", None, ExtractStatus.MISSING, 0),
        (f"{START_TAG} cut off by the length limit", None, ExtractStatus.UNCLOSED, 1),
        # Duplicates: the last pair wins.
        (f"{START_TAG}first{END_TAG} then {START_TAG}second{END_TAG}", "second", ExtractStatus.OK, 2),
        # A closed pair followed by a new, unclosed answer: the final answer is unclosed.
        (f"{START_TAG}first{END_TAG} wait, {START_TAG}second", None, ExtractStatus.UNCLOSED, 2),
        # Nested start tags: the innermost (last opened) content.
        (f"{START_TAG}outer {START_TAG}inner{END_TAG} tail{END_TAG}", "inner", ExtractStatus.OK, 2),
        (f"{START_TAG}   \n {END_TAG}", None, ExtractStatus.EMPTY, 1),
        (f"{START_TAG}multi\nline{END_TAG}{END_TAG}", "multi\nline", ExtractStatus.OK, 1),
    ],
)
def test_extraction(text: str, prediction: str | None, status: ExtractStatus, starts: int) -> None:
    result = extract_prediction(text)
    assert result.prediction == prediction
    assert result.status is status
    assert result.num_start_tags == starts
    assert result.ok is (status is ExtractStatus.OK)


def test_lambda_as_sampling_ratio() -> None:
    cfg = TaskConfig(lam=0.5)
    assert msr_probability(cfg) == pytest.approx(1 / 3)
    rng = random.Random(0)
    counts = [assign_tasks(30, cfg, rng).count(Task.MSR) for _ in range(300)]
    assert set(counts) <= {9, 10, 11}  # 30/3 = 10, rounded at random only when fractional
    assert sum(counts) / len(counts) == pytest.approx(10, abs=0.01)
    odd = [assign_tasks(7, cfg, rng).count(Task.MSR) for _ in range(3000)]
    assert set(odd) == {2, 3} and sum(odd) / len(odd) == pytest.approx(7 / 3, abs=0.05)
    assert task_loss_weight(Task.MSR, cfg) == 1.0
    assert assign_tasks(10, TaskConfig(lam=0.0), rng) == [Task.ASR] * 10


def test_lambda_as_loss_weight() -> None:
    cfg = TaskConfig(lam=0.25, lambda_mode="loss_weight")
    assert msr_probability(cfg) == 0.5
    assert assign_tasks(8, cfg, random.Random(1)).count(Task.MSR) == 4
    assert task_loss_weight(Task.MSR, cfg) == 0.25
    assert task_loss_weight(Task.ASR, cfg) == 1.0
    with pytest.raises(UsageError):
        msr_probability(TaskConfig(lam=-1))
    with pytest.raises(UsageError):
        msr_probability(TaskConfig(lambda_mode="other"))  # type: ignore[arg-type]


def test_judge_reference() -> None:
    cfg = TaskConfig(asr_reference_segments=2)
    following = ["S2.", "S3.", "S4."]
    assert build_reference(Task.ASR, "S1.", following, cfg) == "S1. S2. S3."
    # MSR: s_i alone by default, so copying the visible s_i+1 earns nothing.
    assert build_reference(Task.MSR, "S1.", following, cfg) == "S1."
    assert build_reference(Task.MSR, "S1.", following, TaskConfig(msr_reference_segments=1)) == "S1. S2."
    assert build_reference(Task.ASR, "S1.", following, cfg, strict=True) == "S1."
    assert build_reference(Task.ASR, "S1.", [], cfg) == "S1."
