"""Several processes with torch.distributed (``torchrun``): who this process is and what it shares.

A run on W processes trains exactly what one process trains on the same global batch:
every process draws the same epoch index streams, takes its contiguous rows of every
global batch (``World.part``), and torch's ``DistributedDataParallel`` averages the gradients
during the backward pass (``World.data_parallel``; a loss over fewer rows than the even share
is scaled, see ``Trainer``). Nothing here knows about methods or datasets.

``launched`` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL when the run is on CUDA, gloo otherwise
(CPU tests). One process (no environment) is a ``World()`` whose collectives are identities.
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .validation import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (config, curve, checkpoints, metrics)."""
        return self.rank == 0

    def part(self, n: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of n rows: contiguous, in rank order, sizes differing by at most one."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def steps(self, length: int, batch_size: int) -> int:
        """Steps of an epoch of ``length`` draws: ceil(length / batch), less a last partial batch
        too small to give every process a row (only when several processes share it)."""
        if batch_size < self.size:
            raise ValueError(f"train.batch_size ({batch_size}) must be at least the number of processes ({self.size})")
        steps = math.ceil(length / batch_size)
        tail = length - (steps - 1) * batch_size
        return steps - 1 if steps > 1 and tail < self.size else steps

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: an unnumbered ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
        if device.type == "cuda" and device.index is None and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    # --- collectives (identities for one process) --------------------------------------
    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` concatenated along dim 0 in rank order (the rows may differ in number)."""
        if self.size == 1:
            return t
        channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
        sizes = torch.tensor([t.shape[0]], device=t.device)
        all_sizes = [torch.empty_like(sizes) for _ in range(self.size)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
        padded = t.new_zeros((max(counts), *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out = torch.cat([p[:c] for p, c in zip(parts, counts)])
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce ``t`` in place to its mean over ranks."""
        if self.size > 1:
            dist.all_reduce(t)
            t.div_(self.size)
        return t

    def data_parallel(self, module: nn.Module, find_unused_parameters: bool) -> nn.Module:
        """``module`` under ``DistributedDataParallel`` (itself for one process): every gradient averaged
        over ranks in buckets, overlapped with the backward pass. ``find_unused_parameters``: a forward may
        leave trainable parameters out; one without a gradient on every rank then keeps none (so SGD skips
        it, as one process would), one with a gradient on some ranks gets zeros on the others. Buffers are
        not broadcast at each forward: ``broadcast_buffers`` does it once per epoch, before evaluation."""
        if self.size == 1:
            return module
        return nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused_parameters,
                                                   forward_sync_buffers=False)

    def agree(self, flag: bool) -> bool:
        """Whether ``flag`` is True on every rank (one all-reduce of a flag, read on the host)."""
        if self.size == 1:
            return flag
        t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def same_everywhere(self, value: int) -> bool:
        """Whether every rank holds the same integer ``value`` (one all-reduce of [v, -v] to their maxima)."""
        if self.size == 1:
            return True
        t = torch.tensor([value, -value], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0]) == -int(t[1])

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) to every rank, as DDP does, once per epoch:
        DDP's own broadcast comes at the start of each forward, so after an epoch's last step every
        rank would still hold its own statistics, and evaluation (shared among the ranks) would use them."""
        if self.size == 1:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj`` on rank 0 (tensors moved to the CPU first); None elsewhere."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(_to_cpu(obj), out, dst=0)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


@dataclass(frozen=True)
class BatchShard:
    """This process's rows [start, stop) of a global batch of ``total`` rows (a method that shares
    state across processes, e.g. CSA's gathered bank, draws for the whole batch and keeps these rows)."""

    start: int
    stop: int
    total: int
    world: World = World()

    @property
    def split(self) -> bool:
        """True when the batch is shared among several processes."""
        return self.world.size > 1

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor over the whole batch."""
        return t[self.start: self.stop]


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def torchrun_command(nproc: int, tailshift_args: list[str]) -> list[str]:
    """The command running ``tailshift ARGS`` on ``nproc`` processes of this machine with torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "tailshift", *tailshift_args]


#: the environment torchrun needs to restart workers: by default its agents keep one TCP store for every
#: rendezvous round, where restarted workers can read the previous round's addresses and fail to connect
#: (pytorch/pytorch#135712); with this, each round's rank 0 hosts a new store
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def multinode_torchrun_args(nnodes: int, nproc_per_node: int, endpoint: str, run_id: str, max_restarts: int,
                            tailshift_args: list[str]) -> list[str]:
    """torchrun's arguments for ``tailshift ARGS`` on ``nnodes`` machines of ``nproc_per_node`` processes
    each, the same on every machine (run with ``RESTART_ENV``): they meet at the c10d rendezvous
    ``endpoint`` (HOST:PORT of one of them, which hosts the store), and a failed process restarts every
    worker up to ``max_restarts`` times, which resume from the last epoch checkpoint.
    docs/large-scale.md shows this command; a test runs it with two agents on one machine."""
    return [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", f"--max-restarts={max_restarts}",
            "-m", "tailshift", *tailshift_args]


def current_world() -> World:
    """The World of an initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def check_device(device: str, local_processes: int) -> None:
    """Refuse an indexed device (``cuda:0``) for several processes of one machine: every one of them
    would train on that GPU. Checked without CUDA, before any process group or data."""
    if local_processes > 1 and ":" in device:
        raise ConfigError(f"device={device} names one GPU for all {local_processes} processes of this machine; "
                          "use device=cuda or device=auto (each process then takes cuda:LOCAL_RANK)")


@contextmanager
def launched(device: str = "auto"):
    """The World of this process. Under torchrun (``WORLD_SIZE`` > 1) the process group is
    created here (NCCL on CUDA, bound to this process's GPU; gloo otherwise) and destroyed on
    exit; a group the caller already created is used as it is."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if (dist.is_available() and dist.is_initialized()) or size <= 1:
        yield current_world()
        return
    check_device(device, int(os.environ.get("LOCAL_WORLD_SIZE", size)))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device != "cpu" and torch.cuda.is_available():
        gpu = torch.device("cuda", local_rank)
        torch.cuda.set_device(gpu)
        dist.init_process_group("nccl", device_id=gpu)
    else:
        dist.init_process_group("gloo")
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- synchronised batch norm

class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the union of every rank's batch on any backend: the per-channel sums (and the row
    count, so ranks may hold different numbers of rows) are all-reduced forward (mean, variance) and
    backward (the two gradient sums). Statistics in float32 (float64 for float64 input), the output and
    the input's gradient in the input's dtype (bf16 under autocast); the count stays a device tensor, so
    nothing waits on the device and ``torch.compile`` traces the layer without a break."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        c = x.shape[1]
        dims = [0, 2, 3]
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        count = xs.new_full((1,), x.numel() // c)
        stats = torch.cat([xs.sum(dims), (xs * xs).sum(dims), count])
        dist.all_reduce(stats)
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c: 2 * c] / count - mean * mean).clamp_min(0)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            unbiased = var * count / (count - 1).clamp_min(1)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd, count)
        scale = (weight.to(invstd.dtype) * invstd).view(1, c, 1, 1)
        shift = (bias.to(invstd.dtype) - mean * weight.to(invstd.dtype) * invstd).view(1, c, 1, 1)
        return (xs * scale + shift).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd, count = ctx.saved_tensors
        c = grad.shape[1]
        dims = [0, 2, 3]
        g = grad.to(mean.dtype)
        xhat = (x.to(mean.dtype) - mean.view(1, c, 1, 1)) * invstd.view(1, c, 1, 1)
        sum_dy, sum_dy_xhat = g.sum(dims), (g * xhat).sum(dims)
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both)
        mean_dy, mean_dy_xhat = (both / count).split(c)
        grad_x = (g - mean_dy.view(1, c, 1, 1) - xhat * mean_dy_xhat.view(1, c, 1, 1)) \
            * (weight.to(invstd.dtype) * invstd).view(1, c, 1, 1)
        return (grad_x.to(x.dtype), sum_dy_xhat.to(weight.dtype), sum_dy.to(weight.dtype),
                None, None, None, None)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics span every process (same parameters and
    buffers, so checkpoints are interchangeable). torch's ``nn.SyncBatchNorm`` runs on GPUs
    only; this one runs on any backend, gloo included (``sync_batchnorm`` uses torch's on CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative average, as nn.BatchNorm2d's, without reading the count on the host
                momentum = 1.0 / self.num_batches_tracked
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        weight = self.weight if self.affine else torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        bias = self.bias if self.affine else torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        return _SyncBatchNormFunction.apply(x, weight, bias, *running, self.eps, momentum)


#: the synchronised batch norms ``sync_batchnorm`` puts in
SYNCHRONISED = (SyncBatchNorm2d, nn.SyncBatchNorm)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` replaced by a synchronised one holding its tensors:
    torch's ``nn.SyncBatchNorm`` on CUDA, ``SyncBatchNorm2d`` elsewhere. Subclasses of ``nn.BatchNorm2d``
    (a backbone's own, e.g. frozen, batch norm) are kept."""
    kind = nn.SyncBatchNorm if device.type == "cuda" else SyncBatchNorm2d
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            tensors = [*child.parameters(), *child.buffers()]
            synced = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                          device=tensors[0].device if tensors else None,
                          dtype=tensors[0].dtype if tensors else None)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            for p_new, p_old in zip(synced.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(module, name, synced)
        else:
            sync_batchnorm(child, device)
    return module


def synchronises_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a synchronised batch norm: each of its training forwards is then a
    collective, which every rank must run as often as the others."""
    return any(isinstance(m, SYNCHRONISED) for m in module.modules())
