"""The speed switches (train.compile, amp, channels_last, fused_optimizer) and CSA's joint forward:
what "auto" resolves to, that a compiled step computes what the eager one does, that amp and the
other switches train, and that one concatenated forward equals two where batch norm is absent.
Speed itself is measured in benchmarks/gpu_epoch.py, never here."""
from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import tiny_prepared
from tailshift.config import build_config
from tailshift.data.pipeline import Batch
from tailshift.engine import train
from tailshift.methods import METHODS, StepContext
from tailshift.models import create_model
from tailshift.resolve import resolve_run
from tailshift.speed import Speed, resolve_speed

COUNTS = np.array([60, 40, 30, 20, 15, 10, 10, 6, 5, 4])
B = 16


def _compiler_works() -> str | None:
    """None when inductor can build CPU kernels here, else why not."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        return "no C++ compiler on PATH: torch.compile's inductor cannot build CPU kernels"
    if subprocess.run([cxx, "--version"], capture_output=True).returncode != 0:
        return f"{cxx} --version fails"
    return None


NO_COMPILER = _compiler_works()


def _cfg(*overrides):
    return build_config({}, list(overrides)).train


def test_auto_is_off_on_cpu_but_channels_last_and_explicit_values_are_honoured():
    cpu = torch.device("cpu")
    assert resolve_speed(_cfg(), cpu) == Speed(compile="off", amp="off", channels_last=True, fused_optimizer=False)
    explicit = resolve_speed(_cfg("train.compile=reduce-overhead", "train.amp=fp16", "train.channels_last=off",
                                  "train.fused_optimizer=on"), cpu)
    assert explicit == Speed(compile="reduce-overhead", amp="fp16", channels_last=False, fused_optimizer=True)


def test_auto_on_cuda_compiles_uses_bf16_where_supported_and_fuses(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_speed(_cfg(), cuda) == Speed(compile="default", amp="bf16", channels_last=True, fused_optimizer=True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_speed(_cfg(), cuda).amp == "off"  # emulated bf16 (pre-Ampere) is slower than float32; no fp16
    # by surprise either: it needs a scaler and can overflow
    assert resolve_speed(_cfg("train.amp=off", "train.compile=off"), cuda) == Speed(fused_optimizer=True)


def test_speed_switches_never_change_the_fingerprint_but_amp_does():
    def fingerprint(*overrides):
        return resolve_run(build_config({}, list(overrides))).fingerprint()

    for same in ("train.compile=default", "train.channels_last=off", "train.fused_optimizer=on", "train.amp=auto"):
        assert fingerprint(same) == fingerprint(), same
    assert fingerprint("train.amp=bf16") != fingerprint()
    assert fingerprint("method.name=csa", "method.params.joint_forward=false") == fingerprint("method.name=csa")


# --- a compiled step computes the eager one --------------------------------------------------------
def _method(name, model, **params):
    torch.manual_seed(0)
    backbone = create_model(model, in_channels=3, image_size=28)
    return METHODS.get(name)(backbone, 10, COUNTS, 4, params).to(memory_format=torch.channels_last)


def _batches(step):
    g = torch.Generator().manual_seed(step)

    def one():
        x = torch.randn(B, 3, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
        return Batch(x, torch.randint(10, (B,), generator=g), torch.arange(B))

    return {"uniform": one(), "balanced": one(), "main": one()}


def _train_steps(method, steps=3, speed=Speed()):
    """``steps`` SGD steps on fixed batches; the losses and the final parameters."""
    speed.compile_backbone(method.backbone)
    method.train()
    stage = method.stages()[0]
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        ctx = StepContext(stage, 0, 0, step, torch.Generator().manual_seed(step))
        with speed.autocast(torch.device("cpu")):
            out = method.training_step({k: v for k, v in _batches(step).items() if k in stage.streams}, ctx)
        optimizer.zero_grad(set_to_none=True)
        out.loss.float().backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses, [p.detach().clone() for p in method.parameters()], out.logs


# LeNet-2d keeps tracing and compiling within seconds on a loaded 2-core machine (a CIFAR ResNet
# takes minutes there). CSA: delta 0 fills the one-batch bank at once, so the step fuses.
CASES = {"ce": ("ce", {}), "csa": ("csa", {"delta": 0.0, "warmup_epochs": 0})}


def _agree(name, speed):
    """One step compiled against one eager: the losses, and the parameters after the update (the gradients)."""
    method_name, params = CASES[name]
    eager_losses, eager_params, _ = _train_steps(_method(method_name, "lenet2d", **params), steps=1)
    losses, params_after, logs = _train_steps(_method(method_name, "lenet2d", **params), steps=1, speed=speed)
    if method_name == "csa":
        assert float(logs["fused"]) == 1.0  # the compiled backbone went through fusion too
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4, atol=1e-5)
    for got, want in zip(params_after, eager_params):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_traced_step_agrees_with_eager(name):
    """The compiled path (dynamo tracing, AOT autograd's forward and backward graphs) with the
    aot_eager backend, which needs no C++ compiler, so this runs on any machine."""
    torch._dynamo.reset()
    _agree(name, Speed(compile="default", backend="aot_eager"))


@pytest.mark.skipif(NO_COMPILER is not None, reason=NO_COMPILER or "")
@pytest.mark.parametrize("name", list(CASES))
def test_inductor_compiled_step_agrees_with_eager(name):
    torch._dynamo.reset()
    _agree(name, Speed(compile="default"))


def test_bf16_autocast_runs_a_csa_step_on_cpu():
    losses, params, logs = _train_steps(_method("csa", "resnet20", delta=0.0, warmup_epochs=0), steps=1,
                                        speed=Speed(amp="bf16"))
    assert float(logs["fused"]) == 1.0
    assert all(math.isfinite(x) for x in losses) and all(torch.isfinite(p).all() for p in params)
    assert all(p.dtype == torch.float32 for p in params)  # autocast computes in bf16, the weights stay float32


# --- the switches through the engine --------------------------------------------------------------
@pytest.mark.parametrize("switches", [
    ["train.amp=bf16", "train.fused_optimizer=on"],
    ["train.amp=fp16", "train.channels_last=off", "train.optim.clip_grad_norm=5"],  # fp16: the scaler's path
])
def test_engine_trains_csa_under_the_switches(tmp_path, switches):
    cfg = build_config({"output": str(tmp_path / "run"), "progress": False, "model": {"name": "lenet2d"},
                        "method": {"name": "csa", "params": {"warmup_epochs": 1, "delta": 0.0}}},
                       ["train.epochs=2", "train.batch_size=32", "train.optim.lr=0.05", *switches])
    metrics = train(cfg, tiny_prepared(channels=3))
    assert all(math.isfinite(r["loss"]) for r in metrics["curve"]) and metrics["curve"][-1]["fused"] > 0
    if "train.amp=fp16" in switches:  # the loss scale is checkpointed, for an exact resume
        assert "scaler" in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)


# --- CSA's two branches in one forward ------------------------------------------------------------
@pytest.mark.parametrize("name, params", [("dual", {}), ("csa", {"delta": 0.0, "warmup_epochs": 0, "cam_mode": "eval"})])
def test_joint_forward_equals_two_forwards_without_batch_norm(name, params):
    """LeNet-2d has no batch norm, so one concatenated forward must give both branches what two give."""
    two = _train_steps(_method(name, "lenet2d", **params))
    one = _train_steps(_method(name, "lenet2d", joint_forward=True, **params))
    np.testing.assert_allclose(one[0], two[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(one[1], two[1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_joint_forward_runs_one_backbone_forward_per_step():
    method = _method("dual", "resnet20", joint_forward=True)
    calls = []
    original = method.backbone.feature_map
    method.backbone.feature_map = lambda x: calls.append(x.shape[0]) or original(x)
    _train_steps(method, steps=1)
    assert calls == [2 * B]


def test_compiled_feature_map_keeps_one_graph_per_mode_whatever_the_batch_size():
    """Full, partial-tail and test batch sizes (as in training: none below 16, where convolutions guard) in
    train / eval and grad / no-grad modes: one graph per mode (4, where static first graphs make 5 and CSA's
    CAM and joint forwards more), below dynamo's recompile limit of 8, past which it would run eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = create_model("resnet20", in_channels=3, image_size=32)
    Speed(compile="default", backend="aot_eager").compile_backbone(model)
    for training, grad in ((True, True), (False, False), (True, False), (False, True)):
        model.train(training)
        with torch.set_grad_enabled(grad):
            for size in (32, 23, 64, 32):
                assert model.feature_map(torch.randn(size, 3, 32, 32)).shape[0] == size
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])
    torch._dynamo.reset()


def test_backends_policy_is_set_explicitly_on_cuda_and_recorded():
    from tailshift.speed import configure_backends

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)  # process-wide switches: put back as found
    try:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = False, True, True
        assert configure_backends(torch.device("cpu")) == {"cudnn_benchmark": False, "tf32": False}
        assert cudnn.benchmark is False  # nothing is touched for a CPU run
        assert configure_backends(torch.device("cuda")) == {"cudnn_benchmark": True, "tf32": False}
        assert cudnn.benchmark is True and cudnn.allow_tf32 is False and matmul.allow_tf32 is False
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved
