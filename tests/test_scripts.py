"""train.py and evaluate.py run from the command line, as a user runs them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cli import losses, run

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run"
    # a new interpreter, as a user starts it: the one run here through the scripts' entry point
    run("train.py", "--config", str(SMOKE), "--out", str(out), "--device", "cpu",
        "--set", "train.log_every=1", fresh_process=True)
    return out


def test_smoke_run_writes_everything(smoke_run: Path):
    for name in ("latest.pt", "best.pt", "config.toml", "log.jsonl", "val.jsonl"):
        assert (smoke_run / name).is_file(), name
    assert any((smoke_run / "tb").iterdir())
    recorded = losses(smoke_run)
    assert sorted(recorded) == list(range(1, 7))
    assert all(math.isfinite(v) for v in recorded.values())
    state = torch.load(smoke_run / "latest.pt", weights_only=True)
    assert state["step"] == 6 and state["config"]["train"]["steps"] == 6


def test_evaluate_end_to_end(smoke_run: Path, tmp_path: Path):
    out = tmp_path / "eval"
    run("evaluate.py", "--ckpt", str(smoke_run / "latest.pt"), "--out", str(out), "--n", "8",
        "--examples", "2", "--device", "cpu")
    metrics = json.loads((out / "metrics.json").read_text())
    for part in ("rec", "pred"):
        for key in ("bce", "mse", "psnr", "ssim"):
            assert math.isfinite(metrics[part][key]), (part, key)
            for base in ("copy_last", "mean_frame"):
                assert math.isfinite(metrics["baselines"][base][part][key])
    assert math.isfinite(metrics["nelbo"])
    assert 0 <= metrics["missing"]["accuracy"] <= 1 and 0 <= metrics["missing"]["f1"] <= 1
    assert metrics["num_sequences"] == 8 and metrics["step"] == 6 and metrics["scenario"] == "s3"
    assert len(metrics["per_frame"]["rec"]["mse"]) == 6 and len(metrics["per_frame"]["pred"]["mse"]) == 2
    assert metrics["imputation"]["num_missing"] > 0
    assert metrics["tracking_px"]["input"] >= 0 and metrics["tracking_px"]["future"] >= 0
    for name in ("results.md", "per_frame.png", "examples/seq_000.png", "examples/seq_001.gif"):
        assert (out / name).is_file(), name
    table = (out / "results.md").read_text()
    assert "copy last observed frame" in table and "MSE Pred" in table


def test_evaluate_own_video(smoke_run: Path, tmp_path: Path):
    video = np.random.default_rng(0).random((6, 64, 64), dtype=np.float32)
    np.save(tmp_path / "video.npy", video)
    out = tmp_path / "mine"
    run("evaluate.py", "--ckpt", str(smoke_run / "latest.pt"), "--out", str(out), "--input",
        str(tmp_path / "video.npy"), "--examples", "1", "--device", "cpu")
    result = np.load(out / "output.npz", allow_pickle=False)
    assert result["reconstruction"].shape == (1, 6, 1, 64, 64)
    assert result["prediction"].shape == (1, 2, 1, 64, 64)
    assert (out / "examples" / "seq_000.png").is_file()

    np.save(tmp_path / "bad.npy", video[:3])
    proc = run("evaluate.py", "--ckpt", str(smoke_run / "latest.pt"), "--out", str(out), "--input",
               str(tmp_path / "bad.npy"), check=False)
    assert proc.returncode == 1 and "3 frames, fewer than the 6 needed" in proc.stderr


def test_resume_equals_uninterrupted(smoke_run: Path, tmp_path: Path):
    out = tmp_path / "interrupted"
    common = ("--config", str(SMOKE), "--device", "cpu", "--set", "train.log_every=1")
    run("train.py", *common, "--out", str(out), "--stop-after", "2")
    assert sorted(losses(out)) == [1, 2]
    run("train.py", "--resume", str(out), "--device", "cpu")
    assert losses(out) == losses(smoke_run)  # exact float equality, every step


def test_snapshots_and_cumulative_time(tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "snap"
    common = ("--config", str(SMOKE), "--device", "cpu", "--set", "train.log_every=1", "--set", "train.eval_every=2")
    # 1e-6 minutes has passed after the first step, an hour has not after six
    run("train.py", *common, "--out", str(out), "--stop-after", "3", "--threads", "1",
        "--snapshot-minutes", "0.000001,60")
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["min_1e-06.pt"]
    snap = torch.load(out / "snapshots" / "min_1e-06.pt", weights_only=True)
    assert snap["step"] == 1 and snap["extra"]["elapsed"] > 0
    first = torch.load(out / "latest.pt", weights_only=True)["extra"]["elapsed"]
    run("train.py", "--resume", str(out), "--device", "cpu")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert times == sorted(times) and times[3] > first  # the resumed invocation counts on from the first
    val = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [2, 4, 6] and all(r["time"] > 0 for r in val)
    monkeypatch.syspath_prepend(str(ROOT))
    import train

    for bad in ("x", "0", "-5,10"):  # argument errors, in-process: no model is built
        with pytest.raises(SystemExit) as exit_:
            train.main([*common, "--out", str(tmp_path / "bad"), "--snapshot-minutes", bad])
        assert exit_.value.code == 2 and "--snapshot-minutes" in capsys.readouterr().err


def test_checkpoint_round_trip(smoke_run: Path):
    from dive import checkpoint
    from dive.engine import build_model

    state = checkpoint.load(smoke_run / "latest.pt")
    cfg = checkpoint.config_of(state)
    model = build_model(cfg)
    checkpoint.load_model_state(model, state)
    model.eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    x = torch.rand(2, cfg.data.t_in, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a.pred, b.pred)


def test_torchrun_two_processes_only_rank0_writes(tmp_path: Path):
    out = tmp_path / "ddp"
    run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
        "--config", str(SMOKE), "--out", str(out), "--device", "cpu", "--set", "train.steps=2",
        "--set", "train.log_every=1", "--set", "train.eval_every=2")
    assert sorted(losses(out)) == [1, 2]  # one record per step: a second writer would duplicate them
    assert len(list((out / "tb").glob("events.*"))) == 1
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 2


@pytest.mark.parametrize(
    "content, needle",
    [
        ("[train\nsteps = 3", "not valid TOML"),
        ("[train]\nstepz = 3", "valid keys in [train]"),
        ("[train]\nsteps = 'many'", "train.steps: expected an integer"),
        ("[trian]\nsteps = 3", "unknown config section"),
        ("[train]\nlr = -1.0", "train.lr = -1.0 is not allowed"),
    ],
)
def test_bad_config_exits_with_clear_error(tmp_path: Path, content: str, needle: str):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    proc = run("train.py", "--config", str(path), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "run").exists()


def test_bad_override_and_missing_checkpoint(tmp_path: Path):
    proc = run("train.py", "--config", str(SMOKE), "--out", str(tmp_path / "r"), "--set", "model.n_slots=0",
               check=False)
    assert proc.returncode == 2 and "model.n_slots = 0 is not allowed" in proc.stderr
    proc = run("evaluate.py", "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "e"), check=False)
    assert proc.returncode == 1 and "checkpoint not found" in proc.stderr
    proc = run("train.py", "--resume", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 1 and "checkpoint not found" in proc.stderr


def test_fast_recipe_trains_a_few_steps(tmp_path: Path):
    """configs/s2_fast.toml (the earlier CPU recipe, docs/studies/s2-fast-recipe.md) as shipped, with a tiny batch."""
    out = tmp_path / "fast"
    run("train.py", "--config", str(ROOT / "configs" / "s2_fast.toml"), "--out", str(out), "--device", "cpu",
        "--stop-after", "3", "--set", "train.batch_size=2", "--set", "train.eval_every=3",
        "--set", "train.eval_size=4", "--set", "train.log_every=1")
    recorded = losses(out)
    assert sorted(recorded) == [1, 2, 3] and all(math.isfinite(v) for v in recorded.values())
    state = torch.load(out / "latest.pt", weights_only=True)
    stored = state["config"]
    assert stored["data"]["scenario"] == "s2" and stored["train"]["batch_size"] == 2
    assert stored["model"]["pose_std_init"] > 0 and stored["schedule"]["kl_warmup_steps"] > 0


@pytest.mark.parametrize("scenario", ["s1", "s2", "s3"])
def test_track_recipes_train_a_few_steps(tmp_path: Path, scenario: str):
    """configs/s*_track.toml (the CPU recipes, docs/results.md) as shipped, with a tiny batch."""
    out = tmp_path / scenario
    run("train.py", "--config", str(ROOT / "configs" / f"{scenario}_track.toml"), "--out", str(out), "--device", "cpu",
        "--stop-after", "2", "--set", "train.batch_size=2", "--set", "train.eval_every=2",
        "--set", "train.eval_size=4", "--set", "train.log_every=1", "--threads", "1")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    assert all(r["term/track_future"] < 0 for r in records)  # the teacher's term is on and logged
    [val] = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert val["tracking_input_px"] >= 0 and val["tracking_future_px"] >= 0
    stored = torch.load(out / "latest.pt", weights_only=True)["config"]
    assert stored["data"]["scenario"] == scenario and stored["model"]["pose_inference"] == "track"
    assert stored["schedule"]["future_poses_only_steps"] > 0 and stored["loss"]["future_track_std"] > 0
