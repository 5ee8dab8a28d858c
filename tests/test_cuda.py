"""The CUDA path: the same model on the GPU as on the CPU, AMP, CUDA graphs, training and evaluation.

Skipped where there is no CUDA device; bench/gpu_check.sh runs these first on a GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dive import config
from dive.data import MovingMNIST
from dive.elbo import elbo
from dive.engine import build_model, build_optimizer
from dive.objective import autocast

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _setup(batch_size: int = 4):
    cfg = config.load(ROOT / "configs" / "s3.toml", [f"train.batch_size={batch_size}"])
    batch = MovingMNIST(config=cfg.data, split="train", seed=0).batch(list(range(batch_size)))
    return cfg, batch


def test_gpu_forward_and_gradients_match_the_cpu(monkeypatch):
    # TF32 convolutions (cuDNN's default on recent GPUs) round to 10-bit mantissas: off for the comparison
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg, batch = _setup()
    cpu = build_model(cfg)
    gpu = build_model(cfg).cuda()
    noise = cpu.sample_noise(4, generator=torch.Generator().manual_seed(0))
    results = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        b = {k: v.to(device) for k, v in batch.items()}
        out = model(b["input"], temperature=0.5, noise={k: v.to(device) for k, v in noise.items()}, render_slots=False)
        e = elbo(out, b, cfg.loss)
        e.loss.backward()
        results.append((out.pred.detach().cpu(), e.loss.detach().cpu(),
                        torch.cat([p.grad.flatten() for p in model.parameters()]).cpu()))
    (pred_c, loss_c, grad_c), (pred_g, loss_g, grad_g) = results
    torch.testing.assert_close(pred_g, pred_c, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(loss_g, loss_c, atol=1e-4, rtol=1e-3)
    assert torch.nn.functional.cosine_similarity(grad_g, grad_c, dim=0) > 0.999


def test_compiled_amp_training_steps_on_the_gpu():
    # what train.py --amp --compile runs on CUDA: CUDA graphs (dive.compile.resolve_mode)
    from dive.compile import compile_model, resolve_mode

    mode = resolve_mode("auto", torch.device("cuda"))

    cfg, batch = _setup(8)
    model = build_model(cfg).cuda()
    step_model = compile_model(model, mode=mode)
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"]
    b = {k: v.cuda() for k, v in batch.items()}
    losses = []
    for step in range(6):
        noise = model.sample_noise(8, "cuda", generator=torch.Generator("cuda").manual_seed(step))
        with autocast(torch.device("cuda"), True):
            out = step_model(b["input"], temperature=0.5, noise=noise, render_slots=False)
        loss = elbo(out, b, cfg.loss, check_values=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(map(torch.isfinite, torch.tensor(losses))) and min(losses[3:]) < losses[0]


def test_train_and_evaluate_scripts_on_the_gpu(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"
    train = [sys.executable, "train.py", "--config", "configs/smoke.toml", "--out", str(run), "--device", "cuda",
             "--amp", "--quiet"]
    proc = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "evaluate.py", "--ckpt", str(run / "latest.pt"), "--out", str(out),
                           "--device", "cuda", "--n", "16", "--amp"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pred"]["mse"] > 0
