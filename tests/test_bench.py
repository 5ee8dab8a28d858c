"""bench/train_step.py runs and reports every configuration in the documented JSON shape (no timing checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_bench_json():
    cmd = [sys.executable, "bench/train_step.py", "--json", "--config", "configs/smoke.toml", "--batch", "2",
           "--repeats", "1", "--warmup", "0", "--modes", "eager", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"config", "threads", "repeats", "machine", "matmul_ref_gflop_per_s", "results"} <= set(report)
    [row] = report["results"]
    assert row["batch"] == 2 and row["mode"] == "eager" and row["n"] == 1
    for key in ("median_s", "p25_s", "p75_s", "min_s", "max_s", "peak_rss_gib", "flops", "gflop_per_s"):
        assert isinstance(row[key], (int, float)) and row[key] > 0, key
