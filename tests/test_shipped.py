"""The checkpoints in checkpoints/ load, are the files their provenance describes, and still compute
the scores recorded when they were shipped (dive/release.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dive import checkpoint, config
from dive.data import build_dataset
from dive.engine import build_model
from dive.errors import DIVEError
from dive.evaluation import evaluate
from dive.release import CHECK_RTOL, check_scores, release, sha256, write_index

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"
RECORDS = sorted(SHIPPED.glob("*.json"))


def test_the_repository_ships_checkpoints():
    assert RECORDS, f"no provenance files (*.json) in {SHIPPED}"
    listed = (SHIPPED / "README.md").read_text()
    for f in RECORDS:
        assert f"`{json.loads(f.read_text())['file']}`" in listed, f"{f.name} is not in {SHIPPED / 'README.md'}"


@pytest.mark.parametrize("record_file", RECORDS, ids=[f.stem for f in RECORDS])
def test_shipped_checkpoint_computes_its_recorded_scores(record_file):
    torch.set_num_threads(2)
    record = json.loads(record_file.read_text())
    path = SHIPPED / record["file"]
    assert sha256(path) == record["sha256"], f"{path} is not the file {record_file.name} describes"
    state = checkpoint.load(path)
    assert "optimizer" not in state and state["step"] == record["steps"]
    cfg = checkpoint.config_of(state, path)
    model = build_model(cfg)
    checkpoint.load_model_state(model, state, path)
    check = record["check"]
    got = check_scores(model, cfg, n=check["n"])
    for key in ("rec_mse", "pred_mse", "presence_f1"):  # F1 is None where no digit is missing (s1)
        assert got[key] == (None if check[key] is None else pytest.approx(check[key], rel=CHECK_RTOL)), key
    # and the model has learned something: the recorded test-set scores beat showing the last input
    # frame on the future frames
    scores = record["test_set"]
    assert scores["num_sequences"] == 1024
    assert scores["pred_mse"] < scores["copy_last"]["pred"]


def test_release_writes_an_evaluable_checkpoint_and_its_record(tmp_path):
    torch.set_num_threads(2)
    cfg = config.load("configs/smoke.toml", [])
    model = build_model(cfg)
    source = tmp_path / "latest.pt"
    checkpoint.save(source, {"format_version": checkpoint.CHECKPOINT_FORMAT, "version": "test", "step": 7,
                             "config": config.to_dict(cfg), "model": model.state_dict(),
                             "optimizer": {"state": {}, "param_groups": []}, "extra": {"elapsed": 90.0}})
    metrics = evaluate(model, build_dataset(cfg.data, "test"), cfg)
    metrics.update({"step": 7, "test_set": "generated"})
    scores = tmp_path / "metrics.json"
    scores.write_text(json.dumps(metrics))
    out = tmp_path / "ship"
    r = release(source, "smoke", scores, "python train.py --config configs/smoke.toml", out, machine="test")
    shipped = checkpoint.load(out / "smoke.pt")
    assert set(shipped) == {"format_version", "version", "step", "config", "model"}
    assert r["sha256"] == sha256(out / "smoke.pt") and r["training_minutes"] == 1.5 and r["steps"] == 7
    assert r["test_set"]["rec_mse"] == metrics["rec"]["mse"]
    assert json.loads((out / "smoke.json").read_text()) == r
    assert "`smoke.pt` | s3 | 7 |" in (out / "README.md").read_text()
    assert r["nothing_missing"] is False and f"| F1 {r['test_set']['presence_f1']:.3f} |" in (out / "README.md").read_text()
    # where no digit is ever missing (s1) the index gives presence as an accuracy: its F1 says nothing
    s1 = {**r, "file": "s1.pt", "scenario": "s1", "nothing_missing": True,
          "test_set": {**r["test_set"], "presence_f1": 0.0, "presence_accuracy": 0.8334}}
    (out / "s1.json").write_text(json.dumps(s1))
    write_index(out)
    assert "| `s1.pt` | s1 | 7 | 1.5 |" in (out / "README.md").read_text()
    assert "| accuracy 0.833 |" in (out / "README.md").read_text()

    metrics["step"] = 8  # scores of another checkpoint are refused
    scores.write_text(json.dumps(metrics))
    with pytest.raises(DIVEError, match="scores step 8, but .* is at step 7"):
        release(source, "smoke", scores, "x", out)
