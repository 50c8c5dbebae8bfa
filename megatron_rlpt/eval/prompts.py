"""Zero-shot prompts: option letters for multiple choice, `\\boxed{}` for math, `[[...]]` for KOR.

Each prompt works as plain text for a base model and as the user turn of a chat template
(`--chat-template`), where `chat_prompt` wraps it.
"""

from __future__ import annotations

from typing import Any

from megatron_rlpt.eval.extract import LETTERS
from megatron_rlpt.eval.items import CHOICE, KOR, MATH, Item

_CHOICE = (
    "Answer the following multiple choice question{about}. Think step by step, then finish "
    'with "The answer is (X)", where X is the letter of the correct option.\n\n'
    "Question: {question}\n\nOptions:\n{options}\n\nAnswer: Let's think step by step."
)

_MATH = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."

_KOR_INTRO = {
    "cipher": "The rule below defines a cipher. Encrypt or decrypt exactly as it says.",
    "counterfactual": (
        "The text below describes a fictional world. Answer as it is true there, even where it "
        "contradicts the real world."
    ),
    "logic": "The rule below defines a formal logic system. Apply it exactly as written.",
    "operation": "The rule below defines new operations. Compute with them exactly as defined.",
    "puzzle": "The rule below defines a puzzle. Solve it by following the rule exactly.",
}

_KOR = (
    "{intro}\n\n### Rule:\n{rule}\n\n### Question:\n{question}\n\n"
    "Think step by step, then give your final answer in double square brackets, [[like this]], "
    "in the format the question asks for.\n\n### Answer:\n"
)


def build_prompt(item: Item) -> str:
    """The zero-shot prompt for one item."""
    if item.kind == CHOICE:
        subject = item.category.replace("_", " ").strip()
        options = "\n".join(f"({LETTERS[i]}) {text}" for i, text in enumerate(item.choices))
        about = f" about {subject}" if subject else ""
        return _CHOICE.format(about=about, question=item.question.strip(), options=options)
    if item.kind == MATH:
        return _MATH.format(question=item.question.strip())
    if item.kind == KOR:
        return _KOR.format(
            intro=_KOR_INTRO.get(item.category, _KOR_INTRO["puzzle"]),
            rule=str(item.extra["rule"]).strip(),
            question=item.question.strip(),
        )
    raise ValueError(f"unknown item kind {item.kind!r}")


def chat_prompt(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """`prompt` as the user turn of the tokenizer's chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
