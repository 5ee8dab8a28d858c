"""torch.compile: the mode each device gets, and a compiled training step that computes the eager one."""

from __future__ import annotations

import pytest
import torch

from dive import config
from dive.compile import COMPILE_MODES, compile_model, resolve_mode
from dive.data import MovingMNIST
from dive.engine import build_model
from dive.objective import batch_loss
from dive.runtime import step_generator
from dive.schedules import Schedule


def test_compile_modes():
    assert resolve_mode("auto", torch.device("cuda")) == "reduce-overhead"
    assert resolve_mode("auto", torch.device("cpu")) is None
    assert resolve_mode("default", torch.device("cuda")) is None
    assert resolve_mode("max-autotune", torch.device("cpu")) == "max-autotune"
    assert set(COMPILE_MODES) == {"auto", "default", "reduce-overhead", "max-autotune"}
    with pytest.raises(ValueError, match="compile mode must be one of"):
        resolve_mode("fast", torch.device("cpu"))


def test_compiled_training_pass_computes_the_eager_one():
    # The few-channel batch norm steps aside while compiling (inductor fuses torch's own) and the
    # space-to-depth conv and compose are traced as they are: the compiled graph must still give
    # the eager values and gradients. Both go through the training loop's own loss (batch_loss,
    # which unwraps the compiled model for its diagnostic inputs), as `train.py --compile` does.
    torch.set_num_threads(2)
    # Three input frames and one future frame: every stage of the model, and the fewest unrolled LSTM
    # steps (17-20 s with inductor's cache warm, against 25 s for smoke.toml's 8 frames on another day;
    # a cold cache adds about 4 minutes on a 2-core machine).
    # No missing frames: s3's one needs t_in >= 6, and a frame's presence is data, not graph.
    cfg = config.load("configs/smoke.toml", ["data.t_in=3", "data.t_out=1", "data.num_missing=0"])
    batch = MovingMNIST(config=cfg.data, split="train", seed=0).batch(list(range(2)))
    model = build_model(cfg)
    compiled = compile_model(model)
    noise = model.sample_noise(2, "cpu", generator=step_generator(0, 0, 0, torch.device("cpu")))
    sched = Schedule(step=0, lr=1e-3, kl_weight=1.0, temperature=0.5, gamma_app=0.0, gamma_imp=0.25,
                     future_mask=False, blur=0.0, future_poses_only=False)
    results = []
    for step_model in (model, compiled):
        model.zero_grad()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        result = batch_loss(step_model, model, batch, cfg, sched, noise)
        result.loss.backward()
        results.append((result.loss.detach(), result.out.pred.detach(), [p.grad.clone() for p in model.parameters()]))
        model.load_state_dict(state)  # the batch-norm buffers as before the pass
    (loss_e, pred_e, grads_e), (loss_c, pred_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pred_c, pred_e, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_the_ink_tracker_stays_out_of_compiled_graphs():
    # inductor's CPU code for the tracker corrupts memory (dive/compile.py): Dynamo must not trace it,
    # and a model that holds one is compiled without fullgraph, around it.
    from torch._dynamo.exc import Unsupported

    from dive.nn.tracker import InkTracker

    tracker = InkTracker(2, 64, 3.0)
    with pytest.raises(Unsupported, match="torch.compiler.disable"):
        torch.compile(lambda frames: tracker(frames).centres, fullgraph=True)(torch.rand(1, 3, 1, 64, 64))
    track = build_model(config.load("configs/smoke.toml", ["model.pose_inference=track"]))
    assert not compile_model(track).fullgraph
    assert compile_model(build_model(config.load("configs/smoke.toml", []))).fullgraph
