"""A run's speed switches (``train.compile``, ``train.amp``, ``train.channels_last``,
``train.fused_optimizer``), each "auto" resolved for the run's device (config.py says which way
and why), and what the engine does with them.

What is compiled is the backbone's feature map (every convolution, its backward included; its
whole forward when the embedding is not read from that map, ``model.readout=token``), not the method's
whole step: the steps hold Python decisions (warm-up, a full bank, mixup phases),
generators and bank state that would cut the graph or recompile it, while the backbone is
where the kernels are. ``reduce-overhead`` replays that region as CUDA graphs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Speed:
    compile: str = "off"  # off | default | reduce-overhead
    amp: str = "off"  # off | bf16 | fp16
    channels_last: bool = True
    fused_optimizer: bool = False
    #: torch.compile's backend: inductor (the modes above); tests on a machine without a
    #: C++ compiler use "aot_eager", which traces and runs the same graphs without generating code
    backend: str = "inductor"

    def record(self) -> dict:
        """The switches as resolved, for the checkpoint and ``metrics.json``."""
        return {"compile": self.compile, "amp": self.amp, "channels_last": self.channels_last,
                "fused_optimizer": self.fused_optimizer}

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        """The training step's autocast region (a no-op context when amp is off)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """fp16's loss scaler; disabled (every call a pass-through) otherwise: bf16 has float32's range."""
        return torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")

    def compile_backbone(self, backbone: torch.nn.Module) -> None:
        """Replace ``backbone.feature_map`` (which ``forward`` and the methods call) by its compiled form; on a
        backbone whose ``forward`` does not go through it (``embeds_feature_map`` False), ``forward``.

        The batch dimension is marked dynamic on every call: training batches, the epoch's last partial
        batch (12,406 = 96 x 128 + 118 on CIFAR-10-LT), CAM passes and test batches then share one graph
        per grad mode and train/eval mode, instead of a static graph per size that would run dynamo into its
        recompile limit (8 per code object), past which it falls back to eager without a word."""
        if self.compile == "off":
            return
        options = {"mode": self.compile} if self.backend == "inductor" else {}
        name = "feature_map" if getattr(backbone, "embeds_feature_map", True) else "forward"
        compiled = torch.compile(getattr(backbone, name), backend=self.backend, **options)

        def region(x: torch.Tensor) -> torch.Tensor:
            torch._dynamo.maybe_mark_dynamic(x, 0)
            return compiled(x)

        setattr(backbone, name, region)

    def step_begins(self) -> None:
        """Tell CUDA graphs a new training step starts (the previous step's graph outputs may be reused)."""
        if self.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()


def native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 natively: ROCm's GPUs, and NVIDIA's from Ampere (compute
    capability 8.0) on. Emulated bf16 on older GPUs is slower than float32, and
    ``is_bf16_supported(including_emulation=False)`` is not in every torch this package supports."""
    return torch.version.hip is not None or torch.cuda.get_device_capability(device) >= (8, 0)


def configure_backends(device: torch.device) -> dict:
    """Set the CUDA backends' policy explicitly (not whatever the process was left with) and return it
    for the run's record. cuDNN's autotuner is on (the input shapes repeat every step: it picks the
    fastest convolution once); TF32 is off for float32 matmuls and convolutions, so ``train.amp=off``
    is true float32 and the precision comparison of bf16 against it means what it says."""
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return {"cudnn_benchmark": cuda, "tf32": False}


def resolve_speed(train_cfg, device: torch.device) -> Speed:
    """The switches of ``train_cfg`` with "auto" made concrete for ``device`` (see config.TrainConfig)."""
    cuda = device.type == "cuda"

    def chosen(value: str, auto):
        return auto if value == "auto" else value

    bf16 = cuda and native_bf16(device)
    return Speed(
        compile=chosen(train_cfg.compile, "default" if cuda else "off"),
        amp=chosen(train_cfg.amp, "bf16" if bf16 else "off"),
        channels_last=chosen(train_cfg.channels_last, "on") == "on",
        fused_optimizer=chosen(train_cfg.fused_optimizer, "on" if cuda else "off") == "on",
    )
