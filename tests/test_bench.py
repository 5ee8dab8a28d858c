"""bench/train_step.py runs and reports every configuration in the documented JSON shape (no timing checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert report["machine"]["cpu"] and report["device"] == "cpu"
    for key in ("median_s", "p25_s", "p75_s", "min_s", "max_s", "peak_rss_gib", "flops", "gflop_per_s", "seq_per_s"):
        assert isinstance(row[key], (int, float)) and row[key] > 0, key


def test_ab_times_two_checkouts_against_each_other():
    cmd = [sys.executable, "bench/ab.py", "one=.", "two=.", "--json", "--config", "configs/smoke.toml", "--batch", "2",
           "--rounds", "2", "--warmup", "0", "--modes", "eager", "--threads", "1", "--no-throwaway"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["label"], r["mode"], r["batch"]) for r in rows] == [("one", "eager", 2), ("two", "eager", 2)]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0 and all(r["median_s"] > 0 and r["peak_gib"] > 0 for r in rows)
    # the argument errors come before any worker starts: checked in this process
    sys.path.insert(0, str(ROOT / "bench"))
    import ab

    with pytest.raises(SystemExit, match="no bench/train_step.py under /nonexistent"):
        ab.main([f"one={ROOT}", "two=/nonexistent"])
    with pytest.raises(SystemExit, match="labels must differ"):
        ab.main([f"one={ROOT}", f"one={ROOT}"])


def test_learning_curve_scores_every_snapshot(tmp_path: Path, capsys):
    from cli import run as run_script

    run = tmp_path / "run"
    run_script("train.py", "--config", "configs/smoke.toml", "--out", str(run), "--device", "cpu", "--quiet",
               "--threads", "1", "--stop-after", "3", "--snapshot-minutes", "0.000001,0.000002,600")
    sys.path.insert(0, str(ROOT / "bench"))
    import learning_curve

    out = tmp_path / "curve"
    assert learning_curve.main([str(run), "--out", str(out), "--n", "4", "--batch-size", "4"]) == 0
    [records] = json.loads((out / "curve.json").read_text()).values()
    assert [r["minutes"] for r in records] == [0.000001, 0.000002]  # the 600-minute one was never reached
    assert records[0]["step"] <= records[1]["step"] and all(r["num_sequences"] == 4 for r in records)
    assert all(r["scenario"] == "s3" and r["copy_last_rec_mse"] > 0 for r in records)
    # s3 drops one frame per digit, so 4 sequences have missing digits to score the imputation on
    assert all(r["imputation_mse"] > 0 for r in records)
    assert (out / "curve.png").stat().st_size > 0 and "| run | minutes |" in (out / "curve.md").read_text()
    lines = learning_curve.reference_lines({"run": records})
    assert lines["published s3 Rec"] == ([0.0, 0.000002], [42.81, 42.81])
    assert lines["copy-last s3 Rec"][1] == [records[0]["copy_last_rec_mse"]] * 2 and "original s2 Rec" not in lines
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        learning_curve.main([str(tmp_path), "--out", str(out)])
    assert e.value.code == 2 and "no min_*.pt snapshots" in capsys.readouterr().err


def test_split_time_is_the_first_validation_below_4_px(tmp_path: Path):
    sys.path.insert(0, str(ROOT / "bench"))
    from learning_curve import split_time

    run = tmp_path / "run"
    run.mkdir()
    assert split_time(run) is None
    records = [{"step": 500, "time": 60.0, "tracking_input_px": 9.8}, {"step": 1000, "time": 120.0},
               {"step": 1500, "time": 180.0, "tracking_input_px": 3.9}, {"step": 2000, "time": 240.0,
                                                                          "tracking_input_px": 2.0}]
    (run / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 25')
    assert split_time(run) == {"minutes": 3.0, "step": 1500, "tracking_input_px": 3.9}
    assert split_time(run, threshold=2.5)["step"] == 2000 and split_time(run, threshold=1.0) is None


def test_curve_table_states_each_runs_split():
    sys.path.insert(0, str(ROOT / "bench"))
    from learning_curve import table

    text = table({}, {"a": {"minutes": 2.6, "step": 500, "tracking_input_px": 1.6}, "b": None})
    assert "- a: split (first validation below 4 px) after 2.6 minutes, step 500 (1.6 px)" in text
    assert "- b: no validation below 4 px yet" in text


def test_conv_layers_times_every_conv_of_the_model():
    cmd = [sys.executable, "bench/conv_layers.py", "--json", "--config", "configs/smoke.toml", "--batch", "2",
           "--repeats", "1", "--warmup", "0", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["variants"] == ["onednn", "nchw", "native", "bf16math", "autocast"]
    assert report["bf16math_applied"] in (True, False, None)
    [res] = report["results"]

    import torch

    from dive import config as config_mod
    from dive.engine import build_model

    model = build_model(config_mod.load(ROOT / "configs" / "smoke.toml"))
    convs = {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
    assert sorted(row["layer"] for row in res["layers"]) == sorted(convs)  # every conv, each once
    for row in res["layers"]:
        n, c, h, w = row["input_shape"]
        assert c == convs[row["layer"]].in_channels and n % 2 == 0 and h == w
        assert all(row["ms"][v] > 0 for v in report["variants"]), row
    assert not res["layers"][0]["input_grad"]  # the frame encoder's first layer reads the data
    for v in report["variants"]:
        assert abs(res["total_ms"][v] - sum(row["ms"][v] for row in res["layers"])) < 1e-9
    bad = subprocess.run([sys.executable, "bench/conv_layers.py", "--variants", "onednn,cudnn"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown variant(s) ['cudnn']" in bad.stderr


@pytest.mark.parametrize("config", ["configs/s2.toml", "configs/s2_track.toml"])
def test_the_benchmarks_step_is_the_training_loops(config):
    # bench/train_step.py's worker and bench/profile_step.py take dive.engine.train_step, which the
    # training loop takes: the same loss, log scalars and parameters after one step as the loop's first.
    import importlib.util

    import torch

    from dive import config as config_mod
    from dive import schedules
    from dive.data import build_dataset
    from dive.engine import build_model, build_optimizer, train_step
    from dive.runtime import Runtime, train_batches

    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    worker = bench.Worker({"mode": "eager", "batch": 2, "config": str(ROOT / config), "device": "cpu"})
    bench_logs = worker._train_step()

    cfg = config_mod.load(ROOT / config, ["train.batch_size=2", "train.num_workers=0"])
    rt = Runtime(device=torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    batch = next(iter(train_batches(build_dataset(cfg.data, "train"), cfg, 0, rt)))
    loop_logs = train_step(model, model, opt, batch, cfg, schedules.at(0, cfg), rt, amp=False)
    assert bench_logs == loop_logs
    if cfg.loss.future_track_std > 0:
        assert "term/track_future" in loop_logs  # the teacher term is in the benchmarked step
    for (name, a), b in zip(model.state_dict().items(), worker.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_tracker_speed_times_both_clips_of_a_step(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import tracker_speed

    assert tracker_speed.main(["--batch", "2", "--repeats", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["input"]["frames"] == 10 and r["teacher"]["frames"] == 13  # s2_track: 10 input, 3 + 10 future
    assert all(0 < r[c]["q1_ms"] <= r[c]["median_ms"] <= r[c]["q3_ms"] for c in ("input", "teacher"))
    with pytest.raises(SystemExit) as e:
        tracker_speed.main(["--repeats", "0"])
    assert e.value.code == 2


def test_tracker_accuracy_splits_the_error_by_what_is_observed(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import tracker_accuracy

    assert tracker_accuracy.main(["--scenarios", "s1", "s2", "--n", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    s1, s2 = rows["s1"], rows["s2"]
    assert s1["frames_none_observed"] > 0 and s1["out_of_scene_mean"] is None  # s1 hides rows, removes nothing
    assert s2["frames_none_observed"] == 0 and s2["frames_part_observed"] == 0 and s2["out_of_scene_mean"] > 0
    for row in (s1, s2):
        assert 0 < row["in_scene_median"] and 0 <= row["in_scene_over_4px"] <= 1
    assert s2["in_scene_mean"] < s1["in_scene_mean"]  # a hidden half costs the tracker its digits
    assert "future_fit_mean" not in s2
    assert tracker_accuracy.main(["--scenarios", "s2", "--n", "8", "--json", "--motion-fit"]) == 0
    fit = json.loads(capsys.readouterr().out)["s2"]
    assert fit["out_of_scene_mean"] < s2["out_of_scene_mean"]
    assert 0 < fit["future_fit_median"] < 4 and fit["future_fit_mean"] > 0 and 0 <= fit["future_fit_over_4px"] <= 1
    with pytest.raises(SystemExit):
        tracker_accuracy.main(["--n", "0"])
