"""The vLLM side of the vLLM rollout engine; run by the vLLM environment's own interpreter.

    python vllm_worker.py MODEL_DIR '{"dtype": "float32", ...}'   (keyword arguments of vllm.LLM)

vLLM pins its own dependencies, so it lives in a virtual environment of its own and this file
must not import megatron_rlpt. It loads an `LLM` in this process and answers one JSON request per
line on stdin with one line `RLPT-VLLM <json>` on stdout (everything else goes to stderr):

    {"op": "generate", "prompts": [[ids]], "n": N, "sampling": {...}}
        -> {"ok": true, "result": [[{"token_ids", "logprobs", "text", "finish_reason"}]]}
    {"op": "load_weights", "path": DIR}   safetensors files of HF-named tensors, loaded in place
        -> {"ok": true, "result": NUMBER_OF_FILES}
    {"op": "stats"}  -> {"ok": true, "result": {"requests", "prompt_tokens", "completion_tokens",
                                                 "generate_s", "load_weights_s", "pushes"}}
    {"op": "shutdown"}

A start-up that cannot work (a head size the CPU attention lacks) is answered with
`{"ok": false, "kind": "usage", "error": ...}` instead of "ready".
"""

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

PREFIX = "RLPT-VLLM "


class UsageProblem(Exception):
    """The model or options cannot run here; reported to the trainer as a usage error."""


def check_head_size(model_dir):
    """vLLM's CPU attention takes only some head sizes; say which before it fails obscurely."""
    from vllm.platforms import current_platform

    config = Path(model_dir) / "config.json"
    if not current_platform.is_cpu() or not config.is_file():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    hf = json.loads(config.read_text())
    head = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if supported and head not in supported:
        raise UsageProblem(f"vLLM's CPU attention takes head sizes "
                           f"{', '.join(map(str, supported))}; this model's head size is {head}")


class Worker:
    def __init__(self, model_dir, options):
        from vllm import LLM

        check_head_size(model_dir)
        options = {"seed": 0, **options}
        self.llm = LLM(model=model_dir,
                       # Log-probs of the distribution tokens were drawn from (temperature,
                       # top-k/p applied), which the policy-gradient ratio compares against.
                       logprobs_mode="processed_logprobs", **options)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                       "generate_s": 0.0, "load_weights_s": 0.0, "pushes": 0}

    def generate(self, prompts, n, sampling):
        from vllm import SamplingParams

        # No per-request seeds: vLLM's CPU sampler fails on seeded requests in some settings
        # ("CPU Generator does not use offset"); the engine's own seed keeps a run repeatable.
        requests = []
        for ids in prompts:
            # Stop at the context's end, as the other engines do, rather than refusing the prompt.
            room = self.max_model_len - len(ids)
            if room < 1:
                raise ValueError(f"a prompt of {len(ids)} tokens leaves no room in the "
                                 f"context of {self.max_model_len}")
            params = SamplingParams(
                # Greedy samples are all the same and vLLM refuses n > 1 for them: draw one.
                n=1 if sampling["temperature"] == 0 else n,
                temperature=sampling["temperature"], top_p=sampling["top_p"],
                top_k=sampling["top_k"] if sampling["top_k"] > 0 else -1,
                max_tokens=min(sampling["max_tokens"], room), stop=sampling["stop"] or None,
                include_stop_str_in_output=True, logprobs=0)
            requests.append(({"prompt_token_ids": ids}, params))
        t0 = time.perf_counter()
        outputs = self.llm.generate([r[0] for r in requests], [r[1] for r in requests],
                                    use_tqdm=False)
        self.totals["generate_s"] += time.perf_counter() - t0
        self.totals["requests"] += len(prompts)
        self.totals["prompt_tokens"] += sum(len(ids) for ids in prompts)
        result = []
        for out in outputs:
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
                group.append({"token_ids": ids, "logprobs": lps, "text": c.text,
                              "finish_reason": "length" if c.finish_reason == "length"
                              else "stop"})
                self.totals["completion_tokens"] += len(ids)
            result.append([dict(c) for c in group for _ in range(n // len(group))])
        return result

    def load_weights(self, path):
        # In-place reload: vLLM re-runs its post-load weight processing (the CPU backend repacks
        # some weights), which loading into the processed parameters directly would miss.
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()
        self.totals["load_weights_s"] += time.perf_counter() - t0
        self.totals["pushes"] += 1
        return len(list(Path(path).glob("*.safetensors")))

    def stats(self):
        return dict(self.totals)


def main():
    # Slurm delivers the trainer's stop signals (USR1/USR2) to every process of the job step;
    # the trainer saves and then shuts this worker down itself. Ignoring them here is inherited
    # by the processes vLLM starts.
    for name in ("SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    # Replies go to the original stdout; everything else that writes to fd 1 (vLLM's logging,
    # C++ extensions) is sent to stderr so it cannot interleave with a reply.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj):
        replies.write(PREFIX + json.dumps(obj) + "\n")
        replies.flush()

    try:
        worker = Worker(sys.argv[1], json.loads(sys.argv[2]))
    except UsageProblem as err:
        reply({"ok": False, "kind": "usage", "error": str(err)})
        return
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
