"""The vLLM side of the vLLM rollout engine; run by the vLLM environment's own interpreter.

    python vllm_worker.py MODEL_DIR '{"dtype": "float32", ...}'

vLLM pins its own dependencies, so it lives in a virtual environment of its own and this file
must not import megatron_rlpt. It loads an `LLM` in this process and answers one JSON request per
line on stdin with one line `RLPT-VLLM <json>` on stdout (everything else goes to stderr):

    {"op": "generate", "prompts": [[ids]], "n": N, "sampling": {...}}
        -> {"ok": true, "result": [[{"token_ids", "logprobs", "text", "finish_reason"}]]}
    {"op": "load_weights", "path": DIR}   safetensors files of HF-named tensors, loaded in place
        -> {"ok": true, "result": NUMBER_OF_TENSORS}
    {"op": "shutdown"}
"""

import json
import os
import sys
import traceback
from pathlib import Path

PREFIX = "RLPT-VLLM "


class Worker:
    def __init__(self, model_dir, options):
        from vllm import LLM

        self.llm = LLM(model=model_dir, seed=0, enforce_eager=True,
                       distributed_executor_backend="uni",
                       # Log-probs of the distribution tokens were drawn from (temperature,
                       # top-k/p applied), which the policy-gradient ratio compares against.
                       logprobs_mode="processed_logprobs", **options)

    def generate(self, prompts, n, sampling):
        from vllm import SamplingParams

        # No per-request seeds: vLLM's CPU sampler fails on seeded requests in some settings
        # ("CPU Generator does not use offset"); the engine's own seed keeps a run repeatable.
        requests = []
        for ids in prompts:
            params = SamplingParams(
                n=n, temperature=sampling["temperature"], top_p=sampling["top_p"],
                top_k=sampling["top_k"] if sampling["top_k"] > 0 else -1,
                max_tokens=sampling["max_tokens"], stop=sampling["stop"] or None,
                include_stop_str_in_output=True, logprobs=0)
            requests.append(({"prompt_token_ids": ids}, params))
        outputs = self.llm.generate([r[0] for r in requests], [r[1] for r in requests],
                                    use_tqdm=False)
        result = []
        for out in outputs:
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
                group.append({"token_ids": ids, "logprobs": lps, "text": c.text,
                              "finish_reason": "length" if c.finish_reason == "length"
                              else "stop"})
            result.append(group)
        return result

    def load_weights(self, path):
        # In-place reload: vLLM re-runs its post-load weight processing (the CPU backend repacks
        # some weights), which loading into the processed parameters directly would miss.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()
        return len(list(Path(path).glob("*.safetensors")))


def main():
    # Replies go to the original stdout; everything else that writes to fd 1 (vLLM's logging,
    # C++ extensions) is sent to stderr so it cannot interleave with a reply.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj):
        replies.write(PREFIX + json.dumps(obj) + "\n")
        replies.flush()

    worker = Worker(sys.argv[1], json.loads(sys.argv[2]))
    reply({"ok": True, "result": "ready"})
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "shutdown":
            break
        try:
            reply({"ok": True, "result": getattr(worker, op)(**request)})
        except Exception as err:  # report it to the trainer, keep serving
            traceback.print_exc(file=sys.stderr)
            reply({"ok": False, "error": f"{type(err).__name__}: {err}"})


if __name__ == "__main__":
    main()
