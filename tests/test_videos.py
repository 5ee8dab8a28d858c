"""Your own videos (dive/data/videos.py): the folder layout, windows, split, corruption, every bad file
refused by name before training, and a train + evaluate run on a synthetic folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli import run
from dive import config
from dive.data import DataError, Videos, build_dataset
from dive.data.videos import find_clips, hash_split

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"
T_IN, T_OUT, S = 6, 2, 64  # the smoke config's sizes
T = T_IN + T_OUT


def moving_square(length: int, size: int = S, seed: int = 0) -> np.ndarray:
    """(length, size, size) uint8: a bright square bouncing on black."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((length, size, size), np.uint8)
    x, y, vx, vy, w = *rng.integers(0, size - 12, 2), 3, 2, 12
    for t in range(length):
        frames[t, y:y + w, x:x + w] = 255
        if not 0 <= x + vx <= size - w:
            vx = -vx
        if not 0 <= y + vy <= size - w:
            vy = -vy
        x, y = x + vx, y + vy
    return frames


def write_png_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")


@pytest.fixture()
def clips(tmp_path: Path) -> Path:
    """train: an .npy (12 frames) and a PNG folder (9); val: an RGB .npz (8); test: a float .npy (10)."""
    root = tmp_path / "clips"
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
    np.save(root / "train" / "a.npy", moving_square(12, seed=1))
    write_png_folder(root / "train" / "b", moving_square(9, seed=2))
    np.savez(root / "val" / "c.npz", frames=np.repeat(moving_square(8, seed=3)[..., None], 3, axis=-1))
    np.save(root / "test" / "d.npy", moving_square(10, seed=4).astype(np.float32) / 255)
    return root


def data_cfg(root: Path, **overrides) -> config.DataConfig:
    """The smoke config on a folder of clips, no corruption unless `overrides` ask for it."""
    settings = {"dataset": "videos", "root": root, "scenario": "none", "num_blanked": 0, **overrides}
    return config.load(SMOKE, [f"data.{k}={v}" for k, v in settings.items()]).data


def test_windows_splits_and_items(clips: Path):
    cfg = data_cfg(clips)
    train, val, test = (build_dataset(cfg, s) for s in ("train", "val", "test"))
    assert [len(train), len(val), len(test)] == [(12 - T + 1) + (9 - T + 1), 1, 10 - T + 1]
    assert [p.name for p in train.paths] == ["a.npy", "b"]
    assert train.window(4) == (0, 4) and train.window(5) == (1, 0)
    item = train.batch([5, 1])
    a, b = moving_square(12, seed=1), moving_square(9, seed=2)
    frames = torch.from_numpy(np.stack([b[0:T], a[1:1 + T]])).float() / 255
    torch.testing.assert_close(torch.cat([item["input_full"], item["target_full"]], 1)[:, :, 0], frames)
    torch.testing.assert_close(item["input"], item["input_full"])  # no corruption by default
    assert item["present"].shape == (2, T_IN, 1) and item["present"].all()
    assert item["positions"].shape == (2, T, 0, 2) and item["visible"].all()
    grey = val.batch([0])["input_full"][0, :, 0]  # the RGB clip, as grey
    torch.testing.assert_close(grey, torch.from_numpy(moving_square(8, seed=3)[:T_IN]).float() / 255)


def test_missing_data_corruption(clips: Path):
    ds = Videos(split="train", seed=3, config=data_cfg(clips, num_blanked=2, hidden_rows=32))
    item = ds.batch(list(range(len(ds))))
    assert (item["present"].sum(dim=(1, 2)) == T_IN - 2).all() and item["present"][:, 0].all()
    blank = item["present"][..., 0] == 0
    assert item["input"][blank].abs().max() == 0 and item["input_full"][blank].abs().max() > 0
    assert item["visible"][:, :, :32].abs().max() == 0 and item["visible"][:, :, 32:].all()
    assert item["input"][:, :, :, :32].abs().max() == 0 and item["target"][:, :, :, :32].abs().max() == 0
    assert (item["input_full"][:, :, :, :32] > 0).any() and (item["target_full"][:, :, :, :32] > 0).any()
    again = Videos(split="train", seed=3, config=data_cfg(clips, num_blanked=2, hidden_rows=32)).batch([2, 0])
    torch.testing.assert_close(again["present"], item["present"][[2, 0]])  # a function of (split, seed, index)
    other = Videos(split="train", seed=4, config=data_cfg(clips, num_blanked=2, hidden_rows=32)).batch(range(len(ds)))
    assert not torch.equal(other["present"], item["present"])


def test_split_by_name_hash_without_split_folders(tmp_path: Path):
    root = tmp_path / "flat"
    root.mkdir()
    names = [f"clip{i:02d}.npy" for i in range(40)]
    for n in names:
        np.save(root / n, moving_square(T))
    found = find_clips(root)
    assert {s: sorted(p.name for p in found[s]) for s in found} == {
        s: sorted(n for n in names if hash_split(n) == s) for s in ("train", "val", "test")}
    assert all(found[s] for s in found)  # 40 clips: every split gets some
    assert hash_split("clip00.npy") == hash_split("clip00.npy")
    counts = {s: len(found[s]) for s in found}
    assert counts["train"] > counts["val"] and counts["train"] > counts["test"]


def test_empty_split_says_what_to_do(tmp_path: Path):
    (tmp_path / "one").mkdir()
    np.save(tmp_path / "one" / "only.npy", moving_square(T))
    split = hash_split("only.npy")
    other = next(s for s in ("train", "val", "test") if s != split)
    with pytest.raises(DataError, match=rf"no clip in the {other} split \(clips found: .*folders train/, val/ "
                                        rf"and test/"):
        Videos(tmp_path / "one", split=other, config=data_cfg(tmp_path / "one"))


def bad_clips():
    ok = moving_square(T)
    return [
        ("short.npy", lambda p: np.save(p, ok[: T - 1]), r"short.npy: 7 frames, fewer than the 8 needed"),
        ("nan.npy", lambda p: np.save(p, np.full((T, S, S), np.nan, np.float32)), r"nan.npy: contains NaN"),
        ("range.npy", lambda p: np.save(p, np.full((T, S, S), 1.5, np.float32)),
         r"range.npy: float values must lie in \[0, 1\], found \[1.5, 1.5\]"),
        ("rank.npy", lambda p: np.save(p, ok[0]), r"rank.npy: expected frames of shape \(T, H, W\) or"),
        ("int.npy", lambda p: np.save(p, ok.astype(np.int64)), r"int.npy: expected uint8 or float values, got "
                                                                r"dtype int64"),
        ("two.npz", lambda p: np.savez(p, a=ok, b=ok), r"two.npz: holds 2 arrays \(a, b\)"),
        ("garbage.npy", lambda p: p.write_bytes(b"not an array"), r"garbage.npy: not a plain array of numbers"),
        ("pngs", lambda p: (write_png_folder(p, ok), (p / "004.png").write_bytes(b"broken")),
         r"004.png: unreadable PNG"),
        ("sizes", lambda p: (write_png_folder(p, ok), Image.fromarray(ok[0, :32]).save(p / "005.png")),
         r"005.png: frame of size \(32, 64\) in a clip whose first frame is \(64, 64\)"),
        ("nonumber", lambda p: (write_png_folder(p, ok), Image.fromarray(ok[0]).save(p / "last.png")),
         r"last.png: no frame number in the file name"),
    ]


@pytest.mark.parametrize("name, make, message", bad_clips(), ids=[c[0] for c in bad_clips()])
def test_every_bad_clip_is_refused_by_name_when_the_dataset_is_built(tmp_path: Path, name, make, message):
    root = tmp_path / "clips"
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        np.save(root / split / "good.npy", moving_square(T))
    make(root / "train" / name)
    with pytest.raises(DataError, match=message):
        Videos(split="train", config=data_cfg(root))


def test_train_and_evaluate_on_a_folder_of_clips(clips: Path, tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import evaluate
    from dive import engine

    out = tmp_path / "run"
    sets = ["data.dataset=videos", f"data.root={clips}", "data.scenario=none", "data.num_blanked=1",
            "train.steps=4", "train.eval_every=2", "train.eval_size=1"]
    engine.train(config.load(SMOKE, sets), engine.Options(out=out, device="cpu", quiet=True))
    assert [json.loads(line)["step"] for line in (out / "val.jsonl").read_text().splitlines()] == [2, 4]
    assert evaluate.main(["--ckpt", str(out / "latest.pt"), "--out", str(tmp_path / "eval"), "--device", "cpu",
                          "--examples", "1"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_sequences"] == 10 - T + 1 and np.isfinite(metrics["rec"]["mse"])
    assert (tmp_path / "eval" / "examples" / "seq_000.png").exists()
    bad = clips / "train" / "broken.npy"
    np.save(bad, np.full((T, S, S), np.nan, np.float32))
    proc = run("train.py", "--config", str(SMOKE), "--out", str(tmp_path / "run2"), "--device", "cpu",
               *[a for s in sets for a in ("--set", s)], check=False)
    assert proc.returncode == 1 and f"{bad}: contains NaN" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run2" / "latest.pt").exists()
