"""Running train.py / evaluate.py as a user would, for the tests that need a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python ARGS` in the repository root; with `check`, a non-zero exit fails with the output."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=ENV,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> training loss, from a run folder's log.jsonl."""
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())}
