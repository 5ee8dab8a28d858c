"""The pedestrian loader on a small synthetic MOTSChallenge-style folder."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dive.config import DataConfig
from dive.data import DataError, Pedestrians, build_dataset, loader

STRIDE = 2
T_IN, T_OUT = 3, 2
SIZE = 32
CONTENT_H, CONTENT_W = 12, 20  # wide frames: padding goes above and below

# folder -> {permutation id: frame numbers}; expected runs of T_IN + T_OUT kept frames
LAYOUT = {
    "seq_a": {"1": range(0, 20), "2": range(20, 40)},  # 10 + 10 kept frames -> 6 + 6 runs
    "seq_b": {"1": [f for f in range(0, 30) if f != 10]},  # kept 0..8 and 12..28 -> 1 + 5 runs
    "group/seq_c": {"7": range(0, 14)},  # kept 0..12 -> 3 runs
}
RUNS = {"seq_a": 12, "seq_b": 6, "seq_c": 3}


def level(frame: int) -> int:
    return 50 + 4 * frame


def frame_of(value: float) -> int:
    return round((value * 255 - 50) / 4)


def config(**changes) -> DataConfig:
    base = dict(dataset="pedestrians", scenario="none", image_size=SIZE, t_in=T_IN, t_out=T_OUT,
                frame_stride=STRIDE, max_drift=0.0, num_blanked=1)
    base.update(changes)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mots")
    for folder, perms in LAYOUT.items():
        (root / folder).mkdir(parents=True)
        for perm, frames in perms.items():
            for f in frames:
                img = np.full((CONTENT_H, CONTENT_W), level(f), dtype=np.uint8)
                Image.fromarray(img).save(root / folder / f"img_{f:06d}_{perm}.png")
        (root / folder / "notes.txt").write_text("not a frame")
    (root / "other").mkdir()  # not a seq_ folder: ignored
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "other" / "x.png")
    return root


def make(root: Path, split: str = "test", cache: Path | None = None, **changes) -> Pedestrians:
    return Pedestrians(root, split=split, seed=0, config=config(**changes), cache_dir=cache or root / "cache")


def frame_numbers(video: torch.Tensor) -> list[int]:
    """Frame number encoded in each frame's grey level; video (T, C, S, S)."""
    return [frame_of(v) for v in video.amax(dim=(1, 2, 3)).tolist()]


def test_runs_and_split_by_folder(root):
    train, test = make(root, "train"), make(root, "test")
    names = lambda ds: {f.name for f in ds.folders}  # noqa: E731
    assert names(train).isdisjoint(names(test))
    assert names(train) | names(test) == set(RUNS)
    assert len(train.folders) == 2 and len(test.folders) == 1
    assert len(train) == sum(RUNS[n] for n in names(train))
    assert len(test) == sum(RUNS[n] for n in names(test))
    assert {f.name for f in make(root, "val").folders} == names(test)
    # the split does not move with the seed
    other = Pedestrians(root, split="train", seed=5, config=config(), cache_dir=root / "cache")
    assert names(other) == names(train)


def test_item_shapes(root):
    ds = make(root, "train")
    b = ds.batch([0, 1, 2])
    shapes = {
        "input": (3, T_IN, 1, SIZE, SIZE), "target": (3, T_OUT, 1, SIZE, SIZE),
        "input_full": (3, T_IN, 1, SIZE, SIZE), "target_full": (3, T_OUT, 1, SIZE, SIZE),
        "present": (3, T_IN, 1), "visible": (3, 1, SIZE, SIZE), "positions": (3, T_IN + T_OUT, 0, 2),
    }
    assert set(b) == set(shapes)
    for k, shape in shapes.items():
        assert tuple(b[k].shape) == shape, k
        assert b[k].dtype == torch.float32
    for k in ("input", "target", "input_full", "target_full"):
        assert b[k].min() >= 0 and b[k].max() <= 1
    assert (b["visible"] == 1).all()
    item = ds[1]
    for k in shapes:
        assert torch.equal(item[k], b[k][1])


def test_stride_and_order(root):
    for split in ("train", "test", "val"):
        ds = make(root, split, num_blanked=0)
        directions = set()
        for i in range(len(ds)):
            item = ds[i]
            numbers = frame_numbers(torch.cat([item["input_full"], item["target_full"]]))
            assert all(n % STRIDE == 0 for n in numbers), numbers
            steps = {b - a for a, b in zip(numbers, numbers[1:])}
            assert steps in ({STRIDE}, {-STRIDE}), numbers
            directions |= steps
        # only training items are reversed in time
        assert directions == ({STRIDE, -STRIDE} if split == "train" else {STRIDE})


def test_runs_are_exactly_the_consecutive_windows(root):
    t = T_IN + T_OUT
    expected = Counter()
    for perms in LAYOUT.values():
        for frames in perms.values():
            kept = [f for f in frames if f % STRIDE == 0]
            for i in range(len(kept) - t + 1):
                window = kept[i:i + t]
                if all(b - a == STRIDE for a, b in zip(window, window[1:])):
                    expected[tuple(window)] += 1
    seen = Counter()
    for split in ("train", "test"):
        ds = make(root, split, num_blanked=0)
        for i in range(len(ds)):
            item = ds[i]
            seen[tuple(sorted(frame_numbers(torch.cat([item["input_full"], item["target_full"]]))))] += 1
    assert seen == expected
    assert sum(expected.values()) == sum(RUNS.values())  # the gap in seq_b and the id change in seq_a cut runs


def test_blanked_frame_is_labelled(root):
    ds = make(root, "test", num_blanked=1)
    b = ds.batch(range(len(ds)))
    absent = b["present"][..., 0] == 0  # (B, T_in)
    assert (absent.sum(dim=1) == 1).all()
    assert (b["input"][absent] == 0).all()
    assert (b["input_full"][absent].flatten(1).amax(1) > 0).all()
    assert torch.equal(b["input"][~absent], b["input_full"][~absent])
    assert torch.equal(b["target"], b["target_full"])
    assert len(set(absent.float().argmax(1).tolist())) > 1  # not always the same frame
    two = make(root, "test", num_blanked=2).batch(range(len(ds)))
    assert ((two["present"][..., 0] == 0).sum(dim=1) == 2).all()


def test_padding_placement(root):
    ds = make(root, "train", num_blanked=0)
    placements = set()
    content_h = round(CONTENT_H * SIZE / CONTENT_W)
    for i in range(len(ds)):
        video = ds[i]["input_full"][:, 0]  # (T, S, S)
        rows = (video > 0).any(dim=-1)  # (T, S)
        tops = {int(r.nonzero().min()) for r in rows}
        heights = {int(r.sum()) for r in rows}
        assert len(tops) == 1 and heights == {content_h}  # one placement per sequence
        assert (video > 0).any(dim=-2).all()  # full width: no padding left or right
        placements |= tops
    assert placements == {0, (SIZE - content_h) // 2, SIZE - content_h}


def test_cache_is_written_and_reused(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = make(root, "train", cache=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len([f for f in files if f.endswith(".frames.npy")]) == len(first.folders) == 2
    assert len([f for f in files if f.endswith(".sizes.npy")]) == 2
    assert not [f for f in files if f.endswith(".tmp")]
    expected = first.batch(range(len(first)))

    def no_decoding(*args, **kwargs):
        raise AssertionError("images decoded again although cached")

    monkeypatch.setattr(Image, "open", no_decoding)
    second = make(root, "train", cache=cache)
    got = second.batch(range(len(second)))
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert sorted(p.name for p in cache.iterdir()) == files


def test_default_cache_folder(root):
    ds = Pedestrians(root, split="test", config=config())
    assert ds.cache_dir == root / ".dive_cache"
    assert list((root / ".dive_cache").glob("*.frames.npy"))


def test_drift_grows_linearly(tmp_path):
    for s in range(2):
        (tmp_path / f"seq_{s}").mkdir()
        for f in range(0, 12, 2):
            img = np.zeros((SIZE, SIZE), dtype=np.uint8)
            img[12:20, 12:20] = 200
            Image.fromarray(img).save(tmp_path / f"seq_{s}" / f"img_{f:06d}_0.png")
    ds = Pedestrians(tmp_path, split="train", config=config(max_drift=0.05, num_blanked=0),
                     cache_dir=tmp_path / "c")
    ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                            indexing="ij")
    shifts = []
    for i in range(len(ds)):
        item = ds[i]
        video = torch.cat([item["input_full"], item["target_full"]])[:, 0]  # (T, S, S)
        mass = video.sum(dim=(1, 2))
        centre = torch.stack([(video * xs).sum((1, 2)) / mass, (video * ys).sum((1, 2)) / mass], -1)
        moved = centre - centre[0]  # (T, 2) pixels
        step = moved[1]
        assert step.norm() <= 0.05 * SIZE / 2 + 1e-3  # at most max_drift per frame (image width = 2)
        t = torch.arange(len(moved), dtype=torch.float32).unsqueeze(1)
        assert torch.allclose(moved, t * step, atol=2e-3)
        shifts.append(step)
    shifts = torch.stack(shifts)
    assert shifts.norm(dim=1).max() > 0.05 and (shifts[:, 0].sign().unique().numel() > 1 or
                                                 shifts[:, 1].sign().unique().numel() > 1)


def test_deterministic_and_picklable(root):
    ds = make(root, "train")
    again = make(root, "train")
    a, b = ds.batch([4, 2]), again.batch([2, 4])
    for k in a:
        assert torch.equal(a[k][0], b[k][1])
    clone = pickle.loads(pickle.dumps(ds))
    c = clone.batch([4])
    assert torch.equal(c["input"][0], a["input"][0])
    other_seed = Pedestrians(root, split="train", seed=1, config=config(), cache_dir=root / "cache")
    assert any(not torch.equal(other_seed[i]["present"], ds[i]["present"]) or
               not torch.equal(other_seed[i]["input_full"], ds[i]["input_full"]) for i in range(len(ds)))


def test_works_with_loader_workers(root):
    ds = make(root, "train")
    serial = torch.cat([b["input"] for b in loader(ds, batch_size=4)])
    parallel = torch.cat([b["input"] for b in loader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel) and serial.shape[0] == len(ds)


def test_build_dataset_reads_root_from_config(root):
    cfg = config(root=str(root), cache_dir=str(root / "cache"))
    ds = build_dataset(cfg, "test")
    assert isinstance(ds, Pedestrians) and ds.seed == cfg.test_seed and ds.split == "test"


def test_errors_say_where_and_how(tmp_path):
    with pytest.raises(DataError, match="no such folder") as err:
        Pedestrians(tmp_path / "absent", config=config())
    assert "absent" in str(err.value) and "MOTSChallenge" in str(err.value) and "data.root" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no seq_\\* folders under .*empty.*MOTSChallenge"):
        Pedestrians(tmp_path / "empty", config=config())
    with pytest.raises(DataError, match="data.root is empty"):
        Pedestrians(config=config())
    bad = tmp_path / "bad" / "seq_x"
    bad.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(bad / "frame7.png")
    with pytest.raises(DataError, match="frame7.png: cannot read the frame number"):
        Pedestrians(tmp_path / "bad", config=config())
    short = tmp_path / "short"
    for s in range(2):
        (short / f"seq_{s}").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(short / f"seq_{s}" / "img_000000_0.png")
    with pytest.raises(DataError, match="no runs of 5 frames"):
        Pedestrians(short, config=config(), cache_dir=tmp_path / "c")
