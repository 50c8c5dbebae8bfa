"""Greedy generation with vLLM from Hugging Face directories; run by vLLM's own interpreter.

    python vllm_generate.py '[[token ids], ...]' MAX_TOKENS MODEL_DIR [MODEL_DIR ...]

Prints one line `RESULT {model_dir: [{"ids": [...], "logprobs": [...]}, ...]}`: per prompt, the
generated token ids and their log-probabilities. Standalone (vLLM's environment need not have
megatron-rlpt). Run with VLLM_ENABLE_V1_MULTIPROCESSING=0 the engine stays in this process.
"""

import gc
import json
import sys


def generate(model_dir: str, prompts: list, max_tokens: int) -> list:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="float32", max_model_len=64, seed=0, enforce_eager=True,
              distributed_executor_backend="uni")
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1)
    result = []
    for out in llm.generate([{"prompt_token_ids": p} for p in prompts], params):
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        logprobs = [step[t].logprob for step, t in zip(completion.logprobs, ids)]
        result.append({"ids": ids, "logprobs": logprobs})
    del llm
    gc.collect()
    return result


def main() -> None:
    prompts, max_tokens = json.loads(sys.argv[1]), int(sys.argv[2])
    result = {d: generate(d, prompts, max_tokens) for d in sys.argv[3:]}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
