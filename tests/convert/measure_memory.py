"""Peak memory of `rlpt convert` on a mid-sized random model (run by hand; see docs/convert.md).

    .venv/bin/python -m tests.convert.measure_memory WORK_DIR

Builds a Llama-shaped model (~0.2 B parameters, fp32) from a config, then runs the import and the
export each in a fresh process and prints their peak resident memory next to the model's size
and the resident memory of a process that only imported the same modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SPEC = dict(model_type="llama", vocab_size=32000, hidden_size=1024, intermediate_size=4096,
            num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
            max_position_embeddings=2048, tie_word_embeddings=False)

# Peak resident memory (VmHWM) is reset after the imports (Linux: clear_refs 5), so the
# reported peak is that of the conversion, and the baseline what the imports left resident.
CHILD = """
import sys, json
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
if __name__ == "__main__":
    import megatron.core, safetensors.torch  # noqa: F401
    from megatron_rlpt.convert import hf_to_megatron, megatron_to_hf
    from megatron_rlpt.convert.dist_io import single_process
    with single_process():
        pass
    open("/proc/self/clear_refs", "w").write("5")
    baseline = status("VmRSS:")
    what, src, dst = sys.argv[1:4]
    if what == "import":
        hf_to_megatron(src, dst, tp=1)
    else:
        megatron_to_hf(src, dst, max_shard_size="200MB")
    print(json.dumps({"baseline_mb": round(baseline), "peak_mb": round(status("VmHWM:"))}))
"""


def main() -> None:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf"
    if not hf.exists():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from tests.convert.fixtures import write_tokenizer

        spec = dict(SPEC)
        config = AutoConfig.for_model(spec.pop("model_type"), **spec, dtype="float32")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(hf, max_shard_size="200MB")
        write_tokenizer(hf)
    size_mb = sum(p.stat().st_size for p in hf.glob("*.safetensors")) / 2**20
    out = {"model_mb": round(size_mb)}
    for what, src, dst in (("import", hf, work / "mg"), ("export", work / "mg", work / "out")):
        proc = subprocess.run([sys.executable, "-c", CHILD, what, str(src), str(dst)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        out[what] = json.loads(proc.stdout.strip().splitlines()[-1])
    for what in ("import", "export"):
        out[what]["peak_over_baseline_mb"] = out[what]["peak_mb"] - out[what]["baseline_mb"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
