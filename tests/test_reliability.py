"""Untrusted checkpoints, faults during training and resuming: nothing is lost, nothing foreign runs.

* crafted checkpoints that would run code when unpickled are refused, and the code does not run;
* truncated, corrupt and foreign files give a CheckpointError naming the file and the problem,
  also through evaluate.py and train.py (exit 1, no traceback);
* a run killed with SIGKILL mid-training, or mid-save, resumes from its intact latest.pt and
  then logs exactly the losses of an uninterrupted run;
* non-finite steps are skipped, counted and logged, and too many in a row stop training;
* a full disk or an unwritable folder gives a CheckpointError and keeps the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from cli import losses, run

import pytest
import torch

from dive import checkpoint, config, engine, objective, runlog
from dive.checkpoint import CheckpointError
from dive.engine import Options, TrainingError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# The fault runs: a smoke model checkpointed after every step, long enough to be killed in the middle.
FAULT_STEPS = 12
FAULT_ARGS = ("--config", str(SMOKE), "--device", "cpu", "--quiet", "--set", f"train.steps={FAULT_STEPS}",
              "--set", "train.ckpt_every=1", "--set", "train.log_every=1", "--set", "train.eval_every=1000",
              "--set", "train.image_every=1000")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def assert_clean_refusal(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run"
    run("train.py", "--config", str(SMOKE), "--out", str(out), "--device", "cpu", "--quiet")
    return out


@pytest.fixture()
def run_copy(smoke_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(smoke_run, dst)
    return dst


@pytest.fixture(scope="module")
def fault_reference(tmp_path_factory) -> dict[int, float]:
    """The per-step losses of the fault config trained without interruption."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run("train.py", *FAULT_ARGS, "--out", str(out))
    recorded = losses(out)
    assert sorted(recorded) == list(range(1, FAULT_STEPS + 1))
    return recorded


# --------------------------------------------------------------------------- untrusted checkpoints


class RunsCode:
    """Pickles as a call that creates `marker`: unpickling it runs code."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "os.system":
            return (os.system, (f"touch {self.marker}",))
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def write_malicious(path: Path, marker: Path, kind: str) -> Path:
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps(RunsCode(marker, "os.system"), protocol=2))
    elif kind == "raw pickle, protocol 5":
        path.write_bytes(pickle.dumps({"model": RunsCode(marker, "Path.touch")}, protocol=5))
    else:  # a checkpoint-shaped dict with the payload inside, as torch.save writes it
        torch.save({"format_version": checkpoint.CHECKPOINT_FORMAT, "step": 1, "config": {}, "model": {},
                    "extra": {"note": RunsCode(marker, kind)}}, path)
    return path


MALICIOUS = ["os.system", "Path.touch", "raw pickle", "raw pickle, protocol 5"]


@pytest.mark.parametrize("kind", MALICIOUS)
def test_code_carrying_checkpoint_is_refused_and_does_not_run(tmp_path: Path, kind: str):
    # control: the same payload, loaded the unsafe way, does run
    control_marker = tmp_path / "control-ran"
    control = write_malicious(tmp_path / "control.pt", control_marker, kind)
    try:
        torch.load(control, weights_only=False)
    except Exception:  # the raw pickles are no checkpoint: torch fails after the payload has run
        pass
    assert control_marker.exists(), "the payload does not work, so this test could not fail"

    marker = tmp_path / "ran"
    path = write_malicious(tmp_path / "evil.pt", marker, kind)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert message.startswith(f"refused to load {path}: "), message
    assert "nothing in" in message.lower(), message
    if kind in ("os.system", "Path.touch", "raw pickle"):
        assert "could run code when unpickled" in message
    assert not marker.exists()


def test_code_carrying_checkpoint_through_evaluate_script(tmp_path: Path):
    marker = tmp_path / "ran"
    path = write_malicious(tmp_path / "evil.pt", marker, "os.system")
    proc = run("evaluate.py", "--ckpt", str(path), "--out", str(tmp_path / "eval"), "--device", "cpu",
               check=False)
    assert_clean_refusal(proc, f"refused to load {path}", "could run code when unpickled")
    assert not marker.exists()
    assert not (tmp_path / "eval").exists()


def _state(smoke_run: Path) -> dict:
    return torch.load(smoke_run / "latest.pt", weights_only=True)


def _other_architecture(smoke_run: Path) -> dict:
    """A checkpoint whose weights come from model.hidden = 32 while its config says 16."""
    state = _state(smoke_run)
    cfg = config.apply_overrides(config.from_dict(state["config"]), ["model.hidden=32"])
    state["model"] = engine.build_model(cfg).state_dict()
    return state


def _zip_of_other_files(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes/readme.txt", "hello")


def _damage_tensor_data(src: Path, dst: Path) -> None:
    """A zip whose directory is intact but one tensor's bytes are cut short (a bad disk block)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if "/data/" in info.filename and len(data) > 64:
                data = data[:8]
            zout.writestr(info, data)


# name -> (writer(path, smoke_run), words the error must contain besides the file name)
CORRUPT = {
    "truncated": (lambda p, r: p.write_bytes((r / "latest.pt").read_bytes()[:20000]),
                  "is truncated or corrupt: its zip archive (20000 bytes) has no end record"),
    "empty": (lambda p, r: p.write_bytes(b""), "is empty (0 bytes), not a checkpoint"),
    "random bytes": (lambda p, r: p.write_bytes(random.Random(0).randbytes(4096)), "corrupt, or not a checkpoint"),
    "zip of other files": (lambda p, r: _zip_of_other_files(p),
                           "is a zip archive but not a torch checkpoint (no data.pkl inside; it holds notes/readme.txt)"),
    "zip cut in the middle of a tensor": (lambda p, r: _damage_tensor_data(r / "latest.pt", p),
                                          "truncated, corrupt or not a checkpoint"),
    "a list": (lambda p, r: torch.save([1, 2, 3], p), "not a DIVE checkpoint: expected a dict, found list"),
    "missing keys": (lambda p, r: torch.save({"format_version": 1, "step": 3}, p),
                     "not a DIVE checkpoint: missing config, model"),
    "format 2": (lambda p, r: torch.save({**_state(r), "format_version": 2}, p),
                 "has checkpoint format 2, this code reads format 1"),
    "negative step": (lambda p, r: torch.save({**_state(r), "step": -4}, p), "step should be an integer >= 0"),
    "invalid config": (lambda p, r: torch.save({**_state(r), "config": {"model": {"hidden": -1}}}, p),
                       "stored config is invalid: model.hidden = -1 is not allowed"),
    "other architecture": (lambda p, r: torch.save(_other_architecture(r), p),
                           "does not fit this model"),
}


def _read_like_evaluate(path: Path) -> None:
    state = checkpoint.load(path)
    cfg = checkpoint.config_of(state, path)
    checkpoint.load_model_state(engine.build_model(cfg), state, path)


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_bad_checkpoint_files_give_clear_errors(smoke_run: Path, tmp_path: Path, case: str):
    write, needle = CORRUPT[case]
    path = tmp_path / "ckpt.pt"
    write(path, smoke_run)
    with pytest.raises(CheckpointError) as info:
        _read_like_evaluate(path)
    assert str(path) in str(info.value) and needle in str(info.value), str(info.value)


def test_other_architecture_error_names_the_weights(smoke_run: Path, tmp_path: Path):
    path = tmp_path / "ckpt.pt"
    torch.save(_other_architecture(smoke_run), path)
    with pytest.raises(CheckpointError, match=r"of a different architecture .*: \S+: checkpoint \([\d, ]+\), "
                                              r"model \([\d, ]+\)"):
        _read_like_evaluate(path)


@pytest.mark.parametrize("case", ["truncated", "other architecture", "format 2"])
def test_bad_checkpoint_through_evaluate_script(smoke_run: Path, tmp_path: Path, case: str):
    write, needle = CORRUPT[case]
    path = tmp_path / "ckpt.pt"
    write(path, smoke_run)
    proc = run("evaluate.py", "--ckpt", str(path), "--out", str(tmp_path / "eval"), "--device", "cpu",
               check=False)
    assert_clean_refusal(proc, str(path), needle)


def test_corrupt_latest_through_resume(run_copy: Path):
    before = (run_copy / "log.jsonl").read_text()
    (run_copy / "latest.pt").write_bytes((run_copy / "latest.pt").read_bytes()[:5000])
    proc = run("train.py", "--resume", str(run_copy), "--device", "cpu", check=False)
    assert_clean_refusal(proc, str(run_copy / "latest.pt"), "is truncated or corrupt")
    assert (run_copy / "log.jsonl").read_text() == before  # nothing was touched


# --------------------------------------------------------------------------- resuming with a changed config


def test_resume_refuses_architecture_change(run_copy: Path):
    before = digest(run_copy / "latest.pt")
    proc = run("train.py", "--resume", str(run_copy), "--device", "cpu", "--set", "model.hidden=32", check=False)
    assert_clean_refusal(proc, "different architecture", "model.hidden: 16 -> 32")
    assert digest(run_copy / "latest.pt") == before


def test_resume_refuses_checkpoint_of_other_architecture(run_copy: Path, smoke_run: Path):
    cfg = config.apply_overrides(config.load(SMOKE), ["model.hidden=32"])
    checkpoint.save(run_copy / "latest.pt", {"step": 6, "config": config.to_dict(cfg),
                                             "model": engine.build_model(cfg).state_dict()})
    proc = run("train.py", "--resume", str(run_copy), "--config", str(SMOKE), "--device", "cpu", check=False)
    assert_clean_refusal(proc, "different architecture", "model.hidden: 32 -> 16")


def test_resume_logs_training_key_change(run_copy: Path):
    proc = run("train.py", "--resume", str(run_copy), "--device", "cpu", "--set", "train.lr=5e-4",
               "--set", "train.steps=7")
    assert "resume: config change train.lr: 0.001 -> 0.0005" in proc.stdout
    assert "resume: config change train.steps: 6 -> 7" in proc.stdout
    state = checkpoint.load(run_copy / "latest.pt")
    assert state["step"] == 7 and state["config"]["train"]["lr"] == 5e-4


# --------------------------------------------------------------------------- kills


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training ended (rc {proc.returncode}) before {what}\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _logged_steps(out: Path) -> int:
    try:
        return len((out / "log.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _resume_and_check(out: Path, reference: dict[int, float]) -> int:
    """Resume to the end; returns the step it resumed at. The run must end as if never interrupted."""
    proc = run("train.py", "--resume", str(out), "--device", "cpu", "--quiet")
    resumed_at = int(proc.stdout.split(f"resumed {out} at step ")[1].split()[0])
    state = checkpoint.load(out / "latest.pt")
    assert state["step"] == FAULT_STEPS
    assert losses(out) == reference  # every step once, each loss exactly as without the kill
    assert temp_files(out) == []
    return resumed_at


def test_sigkill_mid_training_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path: Path,
                                                                                  fault_reference):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *FAULT_ARGS, "--out", str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_steps(out) >= 4, proc, "step 4")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    logged = _logged_steps(out)
    assert logged < FAULT_STEPS, "training finished before the kill: nothing was tested"
    saved = checkpoint.load(out / "latest.pt")["step"]
    assert saved >= logged - 1  # ckpt_every = 1: at most the step in flight is lost
    assert _resume_and_check(out, fault_reference) == saved
    print(f"killed after {logged} logged steps, latest.pt at step {saved}; resumed, "
          f"all {FAULT_STEPS} losses equal the uninterrupted run")


# Runs train.py with checkpoint._publish (the rename that makes a new checkpoint visible) hanging
# at its Nth call for latest.pt, after the temporary file has been written and fsynced.
HANG_IN_SAVE = """
import os, pathlib, runpy, sys, time
import dive.checkpoint as ck
flag, hang_at = pathlib.Path(os.environ["DIVE_TEST_FLAG"]), int(os.environ["DIVE_TEST_HANG_AT"])
publish, calls = ck._publish, []
def hanging(tmp, path):
    if pathlib.Path(path).name == "latest.pt":
        calls.append(tmp)
        if len(calls) == hang_at:
            flag.write_text(tmp)
            time.sleep(600)
    publish(tmp, path)
ck._publish = hanging
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path: Path, fault_reference):
    out, flag, hang_at = tmp_path / "run", tmp_path / "saving", 5
    proc = subprocess.Popen([sys.executable, "-c", HANG_IN_SAVE, *FAULT_ARGS, "--out", str(out)], cwd=ROOT,
                            env={**ENV, "DIVE_TEST_FLAG": str(flag), "DIVE_TEST_HANG_AT": str(hang_at)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(flag.exists, proc, "the hanging save")
    before = digest(out / "latest.pt")
    tmp = Path(flag.read_text())
    tmp_size = tmp.stat().st_size
    assert tmp.parent == out and tmp_size > 0  # the new checkpoint is written, not yet renamed
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    assert digest(out / "latest.pt") == before
    assert checkpoint.load(out / "latest.pt")["step"] == hang_at - 1
    assert temp_files(out) == [tmp.name]  # the kill left the temporary file ...
    assert _resume_and_check(out, fault_reference) == hang_at - 1  # ... which is removed and does not matter
    print(f"killed while saving step {hang_at}; latest.pt intact at step {hang_at - 1}; the {tmp_size}-byte "
          f"temporary file the kill left was removed on resume; all {FAULT_STEPS} losses equal the "
          "uninterrupted run")


def test_torn_log_line_from_a_kill_is_dropped(tmp_path: Path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    runlog.trim_jsonl(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'


def test_save_removes_leftover_temp_files_of_that_checkpoint_only(tmp_path: Path):
    for name in (".latest.pt.abc123.tmp", ".latest.pt.x.tmp", ".best.pt.abc.tmp", "notes.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    checkpoint.save(tmp_path / "latest.pt", {"step": 0, "config": {}, "model": {}})
    assert temp_files(tmp_path) == [".best.pt.abc.tmp", "notes.tmp"]
    assert checkpoint.load(tmp_path / "latest.pt")["step"] == 0


# --------------------------------------------------------------------------- non-finite steps


def test_nonfinite_steps_are_skipped_counted_and_stop_training(tmp_path: Path, monkeypatch, capsys):
    cfg = config.load(SMOKE, ["train.steps=10", "train.ckpt_every=4", "train.max_nonfinite=3",
                              "train.log_every=1", "train.eval_every=1000", "train.image_every=1000"])
    out, first_bad = tmp_path / "run", 5
    models, calls, snapshots, latest_digest = [], [], [], []
    real_build, real_elbo = engine.build_model, objective.elbo  # the loss of a batch calls it

    def build(c):
        models.append(real_build(c))
        return models[-1]

    def elbo(*args, **kwargs):
        # a NaN loss from step `first_bad` on; records the weights each bad step starts from
        e = real_elbo(*args, **kwargs)
        calls.append(1)
        if len(calls) < first_bad:
            return e
        snapshots.append({k: v.detach().clone() for k, v in models[0].named_parameters()})
        if len(calls) == first_bad:
            latest_digest.append(digest(out / "latest.pt"))
        return dataclasses.replace(e, loss=e.loss * float("nan"))

    monkeypatch.setattr(engine, "build_model", build)
    monkeypatch.setattr(objective, "elbo", elbo)
    initial = {k: v.clone() for k, v in real_build(cfg).state_dict().items()}
    with pytest.raises(TrainingError) as info:
        engine.train(cfg, Options(out=out, device="cpu", quiet=True))

    message = str(info.value)
    assert "3 non-finite steps in a row (train.max_nonfinite = 3); stopping" in message
    assert f"last good checkpoint is kept in {out / 'latest.pt'}" in message
    printed = capsys.readouterr().out
    for n in (1, 2, 3):
        assert f"step {first_bad + n - 1}: non-finite loss or gradient, optimiser step skipped " \
               f"({n} in a row, {n} in total)" in printed
    assert len(calls) == first_bad + 2  # training stopped at the third bad step

    # the skipped steps changed nothing: every bad step started from the weights of the last good one ...
    good = snapshots[0]
    assert any(not torch.equal(good[k], initial[k]) for k in good)  # (the good steps did train)
    for snap in snapshots[1:]:
        assert all(torch.equal(snap[k], good[k]) for k in good)
    # ... latest.pt, written at step 4, is untouched ...
    assert digest(out / "latest.pt") == latest_digest[0]
    saved = checkpoint.load(out / "latest.pt")
    assert saved["step"] == 4
    # ... and the model ends exactly as it was saved then: weights and BatchNorm statistics, which
    # the forward passes of the skipped steps had updated
    final = models[0].state_dict()
    assert sorted(final) == sorted(saved["model"])
    assert [k for k in final if not torch.equal(final[k], saved["model"][k])] == []


def nan_from_call(monkeypatch, first: int) -> None:
    """The training loss is NaN from the `first`-th batch on (the objective's ELBO replaced)."""
    real, calls = objective.elbo, []

    def elbo(*args, **kwargs):
        e = real(*args, **kwargs)
        calls.append(1)
        return dataclasses.replace(e, loss=e.loss * float("nan")) if len(calls) >= first else e

    monkeypatch.setattr(objective, "elbo", elbo)


def test_train_script_exits_1_after_too_many_nonfinite_steps(tmp_path: Path, monkeypatch):
    out = tmp_path / "run"
    nan_from_call(monkeypatch, 3)
    proc = run("train.py", *FAULT_ARGS, "--out", str(out), "--set", "train.max_nonfinite=2",
               "--set", "train.ckpt_every=2", check=False)
    assert_clean_refusal(proc, "2 non-finite steps in a row", f"last good checkpoint is kept in {out / 'latest.pt'}")
    assert checkpoint.load(out / "latest.pt")["step"] == 2


def test_no_checkpoint_yet_is_said_so(tmp_path: Path, monkeypatch):
    out = tmp_path / "run"
    nan_from_call(monkeypatch, 1)
    proc = run("train.py", *FAULT_ARGS, "--out", str(out), "--set", "train.max_nonfinite=1", check=False)
    assert_clean_refusal(proc, "1 non-finite steps in a row", "no checkpoint was written")
    assert not (out / "latest.pt").exists()


# --------------------------------------------------------------------------- disk full, unwritable folder


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _torch_save_partial_then_full(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _torch_save_writer_fails(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 partial")
    raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\n"
                       "PytorchStreamWriter failed writing file data/0: file write failed")


def _denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


# (object, attribute, replacement, words of the error)
WRITE_FAULTS = {
    "disk full in torch.save": (torch, "save", _torch_save_partial_then_full, "No space left on device"),
    "torch writer fails": (torch, "save", _torch_save_writer_fails,
                           "unexpected pos 64 vs 0; PytorchStreamWriter failed writing file data/0"),
    "disk full at fsync": (os, "fsync", _enospc, "No space left on device"),
    "rename refused": (os, "replace", _denied, "Permission denied"),
    "folder not writable": (tempfile, "mkstemp", _denied, "Permission denied"),
}


@pytest.mark.parametrize("fault", sorted(WRITE_FAULTS))
def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, fault: str):
    path = tmp_path / "latest.pt"
    checkpoint.save(path, {"step": 1, "config": {}, "model": {"w": torch.ones(3)}})
    before = digest(path)
    target, name, replacement, words = WRITE_FAULTS[fault]
    monkeypatch.setattr(target, name, replacement)
    with pytest.raises(CheckpointError) as info:
        checkpoint.save(path, {"step": 2, "config": {}, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    message = str(info.value)
    assert f"could not write checkpoint {path}: {words}" in message
    assert "previous checkpoint, if any, is unchanged" in message
    assert digest(path) == before and checkpoint.load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_disk_full_during_training_stops_cleanly(tmp_path: Path, monkeypatch, capsys):
    train_script = _import_train()
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(obj["step"])
        if obj["step"] > 3:
            return _torch_save_partial_then_full(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    rc = train_script.main(["--config", str(SMOKE), "--out", str(out), "--device", "cpu", "--quiet"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"error: could not write checkpoint {out}") and "No space left on device" in err
    assert checkpoint.load(out / "latest.pt")["step"] == 3
    assert temp_files(out) == []


def _import_train():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------- one process per run folder

def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path):
    from dive.runlock import RunLock
    first = RunLock(tmp_path / "run")
    assert first.acquire() is None  # a new folder: nothing taken over
    with pytest.raises(TrainingError, match=rf"run folder .*run is in use by another training process "
                                            rf"\(pid {os.getpid()} on .*; wait for it to end"):
        RunLock(tmp_path / "run").acquire()  # flock locks conflict across open files, also in one process
    first.release()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # a clean end leaves no record
    second = RunLock(tmp_path / "run")
    assert second.acquire() is None
    second.release()


def test_second_training_process_on_a_run_folder_is_refused_and_a_killed_holder_taken_over(tmp_path: Path,
                                                                                         capsys):
    out = tmp_path / "run"
    args = [*FAULT_ARGS, "--set", "train.steps=100000"]
    holder = subprocess.Popen([sys.executable, "train.py", *args, "--out", str(out)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refusal = f"run folder {out} is in use by another training process (pid {holder.pid} on"
    try:
        _wait_for(lambda: _logged_steps(out) >= 2, holder, "step 2")
        proc = run("train.py", *args, "--out", str(out), check=False)  # the same --out twice
        assert_clean_refusal(proc, refusal, "train.py", "train into another --out")
        cfg = checkpoint.config_of(checkpoint.load(out / "latest.pt"))
        with pytest.raises(TrainingError, match=re.escape(refusal)):  # --resume while it runs
            engine.train(cfg, Options(out=out, device="cpu", resume=True, quiet=True, stop_after=1))
        assert holder.poll() is None
        steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()[:-1]]
        assert steps == list(range(1, len(steps) + 1))  # one writer: no step logged twice, none trimmed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    capsys.readouterr()
    engine.train(cfg, Options(out=out, device="cpu", resume=True, quiet=True, stop_after=1))
    assert f"took over {out} from a training process that is gone (pid {holder.pid} on" in capsys.readouterr().out
    engine.train(cfg, Options(out=out, device="cpu", resume=True, quiet=True, stop_after=1))
    assert "took over" not in capsys.readouterr().out  # the previous run ended cleanly


# ----------------------------------------------------------------- a rank that dies under torchrun

def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@contextlib.contextmanager
def _torchrun_job(out: Path, dist_timeout: float):
    """A 2-rank CPU training job (its own process group) that has logged 3 steps into `out`; whatever
    still runs of it at the end is killed, the ranks too, not only torchrun."""
    args = [*FAULT_ARGS, "--set", "train.steps=100000", "--set", f"train.dist_timeout={dist_timeout}",
            "--out", str(out)]
    job = subprocess.Popen([*TORCHRUN, "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: _logged_steps(out) >= 3, job, "step 3")
        yield job
    finally:
        if job.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)
            job.communicate()


def _rank_pid(job: subprocess.Popen, rank: int) -> int:
    return next(p for p in _descendants(job.pid) if _rank_of(p) == rank and "train.py" in
                Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks' processes through /proc")
def test_a_killed_torchrun_rank_stops_the_job_in_bounded_time_and_resume_continues(tmp_path: Path):
    out = tmp_path / "ddp"
    with _torchrun_job(out, dist_timeout=20) as job:
        os.kill(_rank_pid(job, 1), signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = job.communicate(timeout=120)
        took = time.monotonic() - killed
    assert job.returncode != 0
    assert took < 60, f"the job took {took:.0f} s to stop after rank 1 was killed"
    assert "rank: 1" in stderr and "Signal 9 (SIGKILL)" in stderr, stderr[-3000:]
    saved = checkpoint.load(out / "latest.pt")["step"]
    cfg = checkpoint.config_of(checkpoint.load(out / "latest.pt"))
    engine.train(cfg, Options(out=out, device="cpu", resume=True, quiet=True, stop_after=2))
    assert checkpoint.load(out / "latest.pt")["step"] == saved + 2  # resumed where the checkpoint was
    print(f"rank 1 killed at step {saved}+; the job stopped {took:.1f} s later; resumed at step {saved}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks' processes through /proc")
def test_a_hung_torchrun_rank_ends_the_others_after_dist_timeout_with_a_message(tmp_path: Path):
    out = tmp_path / "ddp"
    with _torchrun_job(out, dist_timeout=5) as job:
        victim, rank0 = _rank_pid(job, 1), _rank_pid(job, 0)
        os.kill(victim, signal.SIGSTOP)  # alive, connections open, never answers
        stopped = time.monotonic()
        while Path(f"/proc/{rank0}").exists() and time.monotonic() - stopped < 60:
            time.sleep(0.1)
        took = time.monotonic() - stopped
        os.kill(victim, signal.SIGCONT)  # so that torchrun's SIGTERM ends it at once
        stdout, stderr = job.communicate(timeout=120)
    assert job.returncode != 0
    assert took < 30, f"rank 0 waited {took:.0f} s for a hung rank 1 (train.dist_timeout = 5 s)"
    assert "rank 0 of 2: lost the other ranks" in stderr and f"continue with --resume {out}" in stderr, stderr[-3000:]
    print(f"rank 1 stopped (SIGSTOP); rank 0 gave up {took:.1f} s later")


def test_only_a_failed_collective_is_reported_as_lost_ranks():
    import torch.distributed as dist
    assert engine._is_collective_failure(dist.DistBackendError("Timed out waiting 5000ms for recv operation"))
    assert engine._is_collective_failure(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert not engine._is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)"))
