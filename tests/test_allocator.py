"""dive.allocator applies where glibc is present and is harmless elsewhere."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc options")
def test_retain_freed_memory_applies_and_torch_still_works():
    # In a child process: the setting is process-wide and must not leak into the test run.
    code = ("import torch; from dive.allocator import retain_freed_memory; ok = retain_freed_memory(); "
            "x = torch.ones(4096, 1024); del x; print(ok, float(torch.ones(3).sum()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, total = out.stdout.split()
    assert total == "3.0"
    libc = subprocess.run(["ldd", "--version"], capture_output=True, text=True)
    if "GNU libc" in libc.stdout + libc.stderr or "GLIBC" in libc.stdout:
        assert applied == "True"
