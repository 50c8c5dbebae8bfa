"""`slurm/rollout_servers.sbatch` starts what `rollout.engine: sglang` talks to: SGLang servers by
default (here under the stand-in srun, with a stand-in for SGLang's launcher that answers
/health), and refuses vLLM servers, which do not speak that API."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.scale.test_slurm import BIN, SLURM, _free_port, slurm_env


def test_rollout_servers_default_to_sglang(tmp_path: Path):
    port = _free_port(48000, 52000)
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"  # stands in for the Python SGLang is installed in
    python.write_text(f'#!/bin/bash\necho "$@" >> {calls}\n'
                      f'exec "{BIN / "health_server"}" "$PORT"\n')
    python.chmod(0o755)
    env = slurm_env(tmp_path, 7101, 1, "rlpt-rollout")
    endpoints = tmp_path / "endpoints" / "rollout.txt"
    env.update(PYTHON=str(python), MODEL="/models/policy-hf", GPUS_PER_NODE="1",
               BASE_PORT=str(port), HEALTH_POLL="0.3", HEALTH_TIMEOUT="60",
               ENDPOINTS_FILE=str(endpoints))
    env.pop("ENGINE", None)
    with open(tmp_path / "rollout.out", "w") as out:
        proc = subprocess.Popen(["bash", str(SLURM / "rollout_servers.sbatch")], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.time() + 60
            while not endpoints.is_file():
                assert proc.poll() is None, (tmp_path / "rollout.out").read_text()
                assert time.time() < deadline, "endpoints file never appeared"
                time.sleep(0.2)
            assert endpoints.read_text().split() == [f"http://localhost:{port}"]
            args = calls.read_text().split()
            assert args[:4] == ["-m", "sglang.launch_server", "--model-path", "/models/policy-hf"]
            assert args[args.index("--port") + 1] == str(port) and "--tp-size" in args
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    assert not endpoints.exists()


def test_rollout_servers_refuse_vllm(tmp_path: Path):
    env = {**slurm_env(tmp_path, 7102, 1, "rlpt-rollout"), "ENGINE": "vllm", "MODEL": "m"}
    proc = subprocess.run(["bash", str(SLURM / "rollout_servers.sbatch")], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "ENGINE=sglang" in proc.stderr and "rollout.engine=vllm" in proc.stderr
    assert not (tmp_path / "logs").exists() or not any(os.scandir(tmp_path / "logs"))
