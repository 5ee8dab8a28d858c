"""reproduce.py: one command per row of the authors' table (on the smoke recipe: seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cli import ROOT, run

sys.path.insert(0, str(ROOT))
import reproduce  # noqa: E402
from dive import engine, published  # noqa: E402

SMOKE = ("--recipe", "smoke", "--device", "cpu", "--quiet", "--threads", "1")


def test_a_row_end_to_end_then_skipped(tmp_path: Path):
    out = tmp_path / "rep"
    proc = run("reproduce.py", "s2", "--steps", "3", "--out", str(out), *SMOKE)
    run_dir = out / "runs" / "s2-smoke-3steps-seed0"
    assert torch.load(run_dir / "latest.pt", weights_only=True)["step"] == 3
    table = json.loads((out / "table.json").read_text())
    row = table["rows"]["s2-smoke-3steps-seed0"]
    assert row["row"] == "s2" and row["scenario"] == "s2" and row["budget"] == "3steps" and row["steps"] == 3
    assert row["device"] == "cpu" and row["seed"] == 0 and "reproduce.py s2" in row["command"]
    assert row["metrics"]["rec"]["mse"] > 0 and 0 <= row["metrics"]["presence_f1"] <= 1
    assert set(row["baselines"]) == {"copy_last", "mean_frame"}
    text = (out / "table.md").read_text()
    pub = published.MOVING_MNIST[("dive", "s2")]
    assert f"{pub['rec']['mse']:.2f}" in text and "difference" in text and "copy last observed frame" in text
    assert "s2-smoke" not in proc.stderr

    again = run("reproduce.py", "s2", "--steps", "3", "--out", str(out), *SMOKE)
    assert "not run again" in again.stdout
    assert json.loads((out / "table.json").read_text()) == table


def test_a_killed_row_continues_where_it_stopped(tmp_path: Path, monkeypatch):
    out = tmp_path / "rep"
    real_step, calls = engine.train_step, []

    def dies_after_four(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", dies_after_four)
    args = ["ddpae-s2", "--steps", "6", "--out", str(out), *SMOKE, "--set", "train.ckpt_every=2"]
    assert reproduce.main(args) == 130
    key = reproduce.row_key(reproduce.ROWS["ddpae-s2"], "smoke", "6steps", 0, ["train.ckpt_every=2"])
    run_dir = out / "runs" / key
    assert torch.load(run_dir / "latest.pt", weights_only=True)["step"] == 4  # the last checkpoint
    assert not (out / "table.json").exists()
    monkeypatch.setattr(engine, "train_step", real_step)
    assert reproduce.main(args) == 0
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # continued at 4, not started again
    row = json.loads((out / "table.json").read_text())["rows"][key]
    assert row["model"] == "ddpae" and row["steps"] == 6
    stored = torch.load(run_dir / "latest.pt", weights_only=True)["config"]["model"]
    assert stored["use_imputation"] is False and stored["use_dynamic_appearance"] is False


def test_scoring_a_checkpoint_twice_is_bit_identical(tmp_path: Path):
    out = tmp_path / "rep"
    assert reproduce.main(["s1", "--steps", "2", "--out", str(out), *SMOKE]) == 0
    run_dir = out / "runs" / "s1-smoke-2steps-seed0"
    first = (run_dir / "metrics.json").read_text()
    again = json.dumps(reproduce.score(run_dir, torch.device("cpu")), indent=2, sort_keys=True) + "\n"
    assert again == first


def test_the_seed_changes_the_run_and_is_recorded(tmp_path: Path):
    out = tmp_path / "rep"
    for seed in ("0", "1"):
        assert reproduce.main(["s3", "--steps", "2", "--seed", seed, "--out", str(out), *SMOKE]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    a, b = rows["s3-smoke-2steps-seed0"], rows["s3-smoke-2steps-seed1"]
    assert (a["seed"], b["seed"]) == (0, 1) and a["metrics"]["rec"]["mse"] != b["metrics"]["rec"]["mse"]
    stored = torch.load(out / "runs" / "s3-smoke-2steps-seed1" / "latest.pt", weights_only=True)["config"]
    assert stored["train"]["seed"] == 1 and stored["data"]["seed"] == 1


def test_overrides_make_another_row(tmp_path: Path):
    out = tmp_path / "rep"
    base = ["s2", "--steps", "2", "--out", str(out), *SMOKE]
    assert reproduce.main(base) == 0
    assert reproduce.main(base + ["--set", "train.lr=0.002"]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert len(rows) == 2 and rows["s2-smoke-2steps-seed0"]["overrides"] == []
    (other,) = [r for k, r in rows.items() if k != "s2-smoke-2steps-seed0"]
    assert other["overrides"] == ["train.lr=0.002"] and "train.lr=0.002" in (out / "table.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (["s4"], "unknown row 's4'"),
    ([], "name one row"),
    (["s2", "--all"], "name one row"),
    (["s2", "--steps", "0"], "--steps must be at least 1"),
    (["s2", "--minutes", "-5"], "--minutes must be a positive number"),
    (["s2", "--steps", "3", "--minutes", "2"], "not allowed with argument"),
    (["pedestrians"], "needs --data-root"),
    (["pedestrians", "--data-root", "/no/such/folder"], "--data-root /no/such/folder: no such folder"),
])
def test_bad_input_names_the_option(tmp_path: Path, capsys, args, needle):
    with pytest.raises(SystemExit) as exit_:
        reproduce.main([*args, "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and needle in err, err
    assert not (tmp_path / "rep").exists()


def test_bad_input_through_the_script(tmp_path: Path):
    proc = run("reproduce.py", "s4", "--out", str(tmp_path / "rep"), check=False)
    assert proc.returncode == 2 and "unknown row 's4'" in proc.stderr and "Traceback" not in proc.stderr


def test_every_row_has_a_published_entry_and_a_config():
    for row in reproduce.ROWS.values():
        assert row.published is not None, row.name
        for recipe, files in reproduce.RECIPES.items():
            if row.scenario in files:
                assert (reproduce.ROOT / files[row.scenario][0]).is_file(), (recipe, row.name)


def test_the_table_lock_is_exclusive_while_held(tmp_path: Path):
    fcntl = pytest.importorskip("fcntl")  # POSIX only; elsewhere the lock is a no-op by design
    path = tmp_path / "out" / "table.lock"
    with reproduce._locked(path):
        with path.open("a") as other:  # a second open file description, as another process would have
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with path.open("a") as other:  # released on exit
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_UN)
