"""The CPU compatibility layer: what it redirects, and that it refuses unknown versions.

Each test runs in a fresh interpreter, because the layer patches torch for the whole process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.multirank import REPO_ROOT


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=180, cwd=REPO_ROOT)


def test_cuda_calls_land_on_cpu():
    proc = _run("""
        import torch
        from megatron_rlpt.runtime import cpu_compat
        assert not cpu_compat.is_enabled()
        assert cpu_compat.enable() and cpu_compat.is_enabled() and cpu_compat.enable()
        dev = torch.cuda.current_device()
        a = torch.empty(3, device=dev)
        b = torch.zeros(2, device="cuda")
        c = torch.ones(2).cuda()
        d = torch.ones(2).to("cuda:0")
        e = torch.ones(2).to(dev)
        assert all(t.device.type == "cpu" for t in (a, b, c, d, e))
        assert torch.ones(1).type() == "torch.cuda.FloatTensor"
        assert torch.ones(1).type(torch.float64).dtype == torch.float64
        torch.cuda.synchronize(); torch.cuda.empty_cache()
        # The CUDA RNG is the CPU generator: forking it changes what CPU kernels draw.
        torch.cuda.manual_seed(5); x = torch.rand(3)
        torch.manual_seed(5); y = torch.rand(3)
        assert torch.equal(x, y)
        state = torch.cuda.get_rng_state(); u = torch.rand(2)
        torch.cuda.set_rng_state(state); v = torch.rand(2)
        assert torch.equal(u, v)
        # Megatron's tracker forks give different, reproducible streams per name.
        from megatron.core import tensor_parallel
        tensor_parallel.get_cuda_rng_tracker().reset()
        tensor_parallel.get_cuda_rng_tracker().add("a", 1)
        tensor_parallel.get_cuda_rng_tracker().add("b", 2)
        with tensor_parallel.get_cuda_rng_tracker().fork("a"):
            ra = torch.rand(2)
        with tensor_parallel.get_cuda_rng_tracker().fork("b"):
            rb = torch.rand(2)
        assert not torch.equal(ra, rb)
        print("ok")
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_unsupported_megatron_version_is_refused():
    proc = _run("""
        import megatron.core
        megatron.core.__version__ = "9.9.0"
        from megatron_rlpt.runtime import cpu_compat
        try:
            cpu_compat.enable()
        except RuntimeError as err:
            print("refused:", err)
    """)
    assert "refused:" in proc.stdout and "9.9.0" in proc.stdout, proc.stderr[-3000:]


def test_disabled_when_cuda_is_present_unless_forced():
    proc = _run("""
        import torch
        torch.cuda.is_available = lambda: True
        from megatron_rlpt.runtime import cpu_compat
        print(cpu_compat.enable(), cpu_compat.is_enabled())
    """)
    assert proc.stdout.split() == ["False", "False"], proc.stderr[-3000:]
