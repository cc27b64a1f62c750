"""Two processes (gloo, CPU) train what one process trains; a killed rank resumes exactly; two torchrun agents
run as two machines.

The 2-process runs are made once per module in two pairs of spawned processes (starting
Python and torch is what costs here): the first runs every compared config and then a run
whose rank 1 kills itself with SIGKILL; the second resumes that run and makes the same run
uninterrupted. The tests compare their folders with each other and with 1-process runs.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from tailshift.config import build_config
from tailshift.distributed import (RESTART_ENV, BatchShard, World, check_device, launched, multinode_torchrun_args,
                                  sync_batchnorm)
from tailshift.engine import CheckpointMismatchError, Trainer, train
from tailshift.methods import METHODS
from tailshift.validation import ConfigError

SRC = str(Path(__file__).resolve().parents[1] / "src")
COUNTS = (60, 40, 25, 15, 10, 8, 6, 5, 4, 4)  # 177 images: the last batch of 30 splits 14 / 13


def write_npz(path: Path, channels: int = 1, size: int = 16) -> Path:
    rng = np.random.default_rng(0)

    def make(per_class):
        labels = np.repeat(np.arange(len(per_class)), per_class).astype(np.int64)
        images = rng.integers(0, 60, size=(len(labels), channels, size, size), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 4)
            images[i, :, 1 + 5 * r: 4 + 5 * r, 1 + 4 * col: 4 + 4 * col] = 250
        return images, labels

    (x_train, y_train), (x_test, y_test) = make(COUNTS), make([7] * len(COUNTS))
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def base(npz: Path, out: Path) -> dict:
    return {"data": {"dataset": "npz", "root": str(npz), "longtail": {"profile": "none"}, "augment": "crop_flip",
                     "padding": 2},
            "train": {"epochs": 3, "batch_size": 30, "test_batch_size": 64,
                      "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"}},
            "sampling": {"balanced_epoch": "dataset"},
            "output": str(out), "progress": False, "device": "cpu"}


#: run name -> overrides; compared 2 processes against 1
EQUAL = {
    "ce": ["method.name=ce"],
    "cbrs": ["method.name=cbrs"],
    "csa": ["method.name=csa", "method.params={warmup_epochs: 1, delta: 0.0, lam_per_sample: true, "
            "bank_scope: global}"],
    # batch norm makes this tiny net's training chaotic in float32 (its float32 and float64 gradients
    # already differ at initialisation), so one short epoch, compared loosely: without the sync
    # the weights differ by 5e-3 and the running statistics by 5 %
    "ce-resnet-syncbn": ["method.name=ce", "model.name=resnet20", "train.sync_batchnorm=true", "train.epochs=1",
                         "train.optim.lr=0.01"],
}
TOLERANCE = {"ce-resnet-syncbn": {"rtol": 1e-2, "atol": 2e-3}}
#: each rank decides alone whether to fuse (its own rows' confident samples, no bank), and batch norm is
#: synchronised: the ranks must agree, else one runs a balanced forward (collectives) the other does not
AGREE = ["method.name=csa", "model.name=resnet20", "train.sync_batchnorm=true", "train.epochs=2", "train.optim.lr=0.01",
         "method.params={warmup_epochs: 0, delta: 0.45, use_bank: false, bank_scope: rank}"]
#: per-rank banks kept across epochs: a checkpoint must carry each rank's bank
RESUME = ["method.name=csa", "train.epochs=4",
          "method.params={warmup_epochs: 1, delta: 0.3, empty_bank_each_epoch: false, bank_scope: rank}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, jobs: list, die_at: tuple[int, int] | None, checks: str | None) -> None:
    """One of two spawned processes: run ``jobs`` (config values, overrides); die_at = (job, epoch):
    rank 1 kills itself (SIGKILL) at the start of that job's epoch; ``checks``: file for collective checks."""
    torch.set_num_threads(1)
    if any(item.startswith("model.name=timm:") for _, overrides in jobs for item in overrides):
        from conftest import import_real  # timm imports torchvision: its workaround, in this process too

        import_real("timm")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if checks:
        world = World(rank, 2)
        gathered = world.gather(torch.full((rank + 1, 2), float(rank)))  # 1 row from rank 0, 2 from rank 1
        grads = data_parallel_gradients(world)
        sync_error = sync_batchnorm_error(rank)
        autocast = sync_batchnorm_under_autocast_and_compile(rank)
        same = [world.same_everywhere(7), world.same_everywhere(rank)]
        if rank == 0:
            Path(checks).write_text(json.dumps({"gathered": gathered.tolist(), "grads": grads,
                                                "agree": [world.agree(True), world.agree(False)], "same": same,
                                                "sync_error": sync_error, "autocast": autocast}))
        else:
            world.agree(True), world.agree(True)  # rank 0: True and False
    original = Trainer._train_epoch

    def dies(self, stage, stage_index, epoch, *args):
        if epoch == die_at[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, stage, stage_index, epoch, *args)

    agree = World.agree
    for i, (values, overrides) in enumerate(jobs):
        Trainer._train_epoch = dies if die_at is not None and die_at[0] == i and rank == 1 else original
        asked = []  # (this rank's flag, the agreed one) of each World.agree
        World.agree = lambda self, flag: asked.append((flag, agree(self, flag))) or asked[-1][1]
        train(build_config(values, overrides))
        Path(values["output"]).with_suffix(f".agree{rank}.json").write_text(json.dumps(asked))
    World.agree = agree
    dist.destroy_process_group()


def data_parallel_gradients(world: World) -> list:
    """Gradients after World.data_parallel's backward over two steps: a used by both ranks (rank r
    gives r), b used by rank 1 only (gives 4) in the first step, by no rank in the second."""
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))

        def forward(self, use_b: bool):
            out = (self.a * world.rank).sum()
            return out + (self.b * 4).sum() if use_b else out

    module = Two()
    step = world.data_parallel(module, find_unused_parameters=True)
    seen = []
    for use_b in (world.rank == 1, False):
        module.zero_grad(set_to_none=True)
        step(use_b).backward()
        seen.append([None if p.grad is None else p.grad.tolist() for p in (module.a, module.b)])
    return seen


def sync_batchnorm_error(rank: int) -> float:
    """Largest difference (float64) between a conv/batch-norm stack on this rank's half of a batch with
    synchronised batch norm and the plain stack on the whole batch: outputs, input and parameter
    gradients (averaged over ranks), running statistics."""
    def stack():
        torch.manual_seed(0)
        layers = [m for _ in range(4) for m in (torch.nn.Conv2d(3, 3, 3, padding=1, bias=False),
                                                 torch.nn.BatchNorm2d(3), torch.nn.ReLU())]
        return torch.nn.Sequential(*layers).double()

    reference, synced = stack(), sync_batchnorm(stack(), torch.device("cpu"))
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randn(8, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mine = slice(4 * rank, 4 * rank + 4)
    x_all, x_mine = x.clone().requires_grad_(), x[mine].clone().requires_grad_()
    ddp = World(rank, 2).data_parallel(synced, find_unused_parameters=False)  # held: its hooks average the gradients
    out_all, out_mine = reference(x_all), ddp(x_mine)
    ((out_all - target) ** 2).mean().backward()
    ((out_mine - target[mine]) ** 2).mean().backward()
    errors = [(out_mine - out_all[mine]).abs().max(), (x_mine.grad / 2 - x_all.grad[mine]).abs().max()]
    errors += [(a.grad - b.grad).abs().max() for a, b in zip(synced.parameters(), reference.parameters())]
    errors += [(a - b).abs().max() for a, b in zip(synced.buffers(), reference.buffers())]
    return float(max(errors))


def sync_batchnorm_under_autocast_and_compile(rank: int) -> dict:
    """A synchronised batch norm on this rank's half of a batch under CPU bf16 autocast, against plain
    batch norm on the whole batch: the output's dtype and largest difference, the weight gradient's
    dtype; and the graph breaks torch.compile (dynamo) makes in its training forward."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    synced = sync_batchnorm(torch.nn.Sequential(*(copy.deepcopy(m) for m in plain)), torch.device("cpu"))
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mine, whole = synced(x[4 * rank: 4 * rank + 4]), plain(x)
    mine.float().sum().backward()
    explained = torch._dynamo.explain(synced[1])(torch.randn(4, 4, 6, 6))
    return {"dtype": str(mine.dtype), "plain_dtype": str(whole.dtype), "weight_grad": str(synced[1].weight.grad.dtype),
            "error": float((mine.float() - whole[4 * rank: 4 * rank + 4].float()).abs().max()),
            "graph_breaks": explained.graph_break_count}


def spawn(jobs: list, die_at: tuple[int, int] | None = None, checks: Path | None = None) -> None:
    tmp.start_processes(_worker, args=(free_port(), jobs, die_at, str(checks) if checks else None), nprocs=2,
                        start_method="spawn")


def weights(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["method"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    npz = write_npz(root / "tiny.npz")
    jobs = [(base(npz, root / "two" / name), over) for name, over in EQUAL.items()]
    jobs.append((base(npz, root / "agree"), AGREE))
    killed = (base(npz, root / "killed"), RESUME)
    with pytest.raises(tmp.ProcessExitedException, match="SIGKILL"):
        spawn([*jobs, killed], die_at=(len(jobs), 2), checks=root / "checks.json")  # rank 1 dies in epoch 3
    (root / "killed.pt").write_bytes((root / "killed" / "checkpoint.pt").read_bytes())
    spawn([killed, (base(npz, root / "two" / "resume-reference"), RESUME)])
    return root, npz


def test_collectives_gather_uneven_rows_and_data_parallel_averages_gradients(runs):
    root, _ = runs
    seen = json.loads((root / "checks.json").read_text())
    assert seen["gathered"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    # a gradient missing on one rank counts as zeros there; one missing on every rank stays missing
    assert seen["grads"] == [[[0.5, 0.5], [2.0, 2.0]], [[0.5, 0.5], None]]
    assert seen["agree"] == [True, False]
    assert seen["same"] == [True, False]
    assert seen["sync_error"] < 1e-12
    # under bf16 autocast the synchronised batch norm returns the input's dtype, as torch's does, with
    # statistics in float32; its count stays on the device, so compile traces it in one graph
    assert seen["autocast"]["dtype"] == seen["autocast"]["plain_dtype"] == "torch.bfloat16"
    assert seen["autocast"]["weight_grad"] == "torch.float32" and seen["autocast"]["error"] < 0.05
    assert seen["autocast"]["graph_breaks"] == 0


@pytest.mark.parametrize("name", list(EQUAL))
def test_two_processes_train_the_weights_of_one(runs, name):
    root, npz = runs
    one = train(build_config(base(npz, root / "one" / name), EQUAL[name]))
    two = json.loads((root / "two" / name / "metrics.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    w1, w2 = weights(root / "one" / name), weights(root / "two" / name)
    assert set(w1) == set(w2)
    for key in w1:
        # float32 sums of one process over 30 rows and of two over 15 each round differently; after
        # 3 epochs this reaches 1.5e-4 on some CPUs (AMD EPYC), far below what a wrong share makes
        tolerance = TOLERANCE.get(name, {"rtol": 1e-3, "atol": 3e-4})
        torch.testing.assert_close(w2[key].float(), w1[key].float(), **tolerance, msg=key)
    if name == "csa":  # the comparison covers fused steps
        assert all(epoch["fused"] > 0 for epoch in two["curve"][1:])
    assert [e["loss"] for e in two["curve"]] == pytest.approx([e["loss"] for e in one["curve"]], rel=1e-3)
    if name not in TOLERANCE:
        assert two["result"]["per_class"] == one["result"]["per_class"]


def test_csa_ranks_agree_whether_to_fuse_under_synchronised_batch_norm(runs):
    """Without the agreement, gloo aborts on the mismatched collectives (NCCL would hang)."""
    root, _ = runs
    asked = [json.loads((root / f"agree.agree{rank}.json").read_text()) for rank in (0, 1)]
    assert len(asked[0]) == len(asked[1]) == 12  # one decision per step, 6 steps in each of 2 epochs
    assert [a for _, a in asked[0]] == [a for _, a in asked[1]]  # one decision for both
    assert any(flag != agreed for rank in asked for flag, agreed in rank)  # where a rank alone would differ
    assert json.loads((root / "agree" / "metrics.json").read_text())["processes"] == 2


def test_every_method_trains_on_two_processes(tmp_path):
    """DDP fails a step after one that left a trainable parameter without a gradient, unless the method
    says its steps may (``Method.may_skip_parameters``): every registered method, its defaults, one epoch."""
    npz = write_npz(tmp_path / "tiny.npz")
    names = METHODS.names()
    spawn([(base(npz, tmp_path / name), [f"method.name={name}", "model.name=resnet20", "train.epochs=1"])
           for name in names])
    for name in names:
        assert json.loads((tmp_path / name / "metrics.json").read_text())["processes"] == 2, name


#: a tiny random ViT (timm), lightweight-tuned: 3 x 32 x 32 images, a 2 x 2 patch grid; the LoRA run as LIFT's
#: head takes it (the class token, a cosine head started from class means, which each process sums over its part)
VIT = {tune: ["method.name=ce", "model.name=timm:vit_tiny_patch16_224", "model.pretrained=none", f"model.tune={tune}",
              "train.epochs=2", "train.optim.lr=0.01", *extra]
       for tune, extra in (("adaptformer", []), ("lora", ["model.readout=token", "model.init_head=class_mean",
                                                          "method.params.classifier=cosine",
                                                          "method.params.classifier_scale=25"]))}


def test_two_processes_train_the_weights_and_logits_of_one_on_a_lightweight_tuned_vit(tmp_path):
    from conftest import import_real

    from tailshift.data.pipeline import normalise
    from tailshift.saved_run import load_run

    import_real("timm")
    npz = write_npz(tmp_path / "tiny.npz", channels=3, size=32)
    spawn([(base(npz, tmp_path / "two" / tune), over) for tune, over in VIT.items()])
    for tune, over in VIT.items():
        one = train(build_config(base(npz, tmp_path / "one" / tune), over))
        two = json.loads((tmp_path / "two" / tune / "metrics.json").read_text())
        assert one["processes"] == 1 and two["processes"] == 2
        assert one["trainable_parameters"] == two["trainable_parameters"]
        w1, w2 = weights(tmp_path / "one" / tune), weights(tmp_path / "two" / tune)
        assert set(w1) == set(w2)
        for key in w1:  # the tolerance of the CNN runs (test_two_processes_train_the_weights_of_one)
            torch.testing.assert_close(w2[key].float(), w1[key].float(), rtol=1e-3, atol=3e-4, msg=f"{tune}: {key}")
        runs = [load_run(tmp_path / n / tune) for n in ("one", "two")]
        images = torch.from_numpy(runs[0].data.test.images)
        with torch.no_grad():
            logits = [r.method.predict(normalise(images, *r.mean_std()))["main"] for r in runs]
        torch.testing.assert_close(logits[1], logits[0], rtol=1e-3, atol=3e-4, msg=tune)
        assert [e["loss"] for e in two["curve"]] == pytest.approx([e["loss"] for e in one["curve"]], rel=1e-3)
        assert two["result"]["per_class"] == one["result"]["per_class"]


def test_per_rank_banks_are_checkpointed_and_a_killed_rank_resumes_exactly(runs):
    root, _ = runs
    saved = torch.load(root / "killed.pt", weights_only=True)  # the checkpoint the kill left
    assert saved["epoch"] == 2 and len(saved["extra_ranks"]) == 2
    banks = [r["bank"]["images"] for r in saved["extra_ranks"]]
    assert banks[0].shape[0] == 15 and not torch.equal(banks[0], banks[1])  # each rank its own rows' bank
    reference = root / "two" / "resume-reference"
    for key, value in weights(reference).items():
        assert torch.equal(weights(root / "killed")[key], value), key
    strip = lambda m: [{k: v for k, v in e.items() if k not in ("seconds", "cpu_seconds")} for e in m["curve"]]  # noqa: E731
    resumed = json.loads((root / "killed" / "metrics.json").read_text())
    assert strip(resumed) == strip(json.loads((reference / "metrics.json").read_text()))


def test_nproc_command_line_runs_torchrun_and_writes_the_run_folder_once(runs, tmp_path):
    root, npz = runs
    config = tmp_path / "ce.yaml"
    config.write_text(json.dumps(base(npz, tmp_path / "run")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    # `tailshift train --nproc 2` runs `torchrun --standalone --nproc_per_node=2 -m tailshift train ...`
    proc = subprocess.run([sys.executable, "-m", "tailshift", "train", str(config), "method.name=ce", "--nproc", "2"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))  # not the lock
    assert written == ["checkpoint.pt", "config.yaml", "curve.json", "metrics.json"]
    assert proc.stdout.count("ce (main head)") == 1  # one summary line: rank 0's
    for key, value in weights(root / "two" / "ce").items():
        assert torch.equal(weights(tmp_path / "run")[key], value), key


#: sitecustomize.py for the two-node test's workers: rank 1 kills itself (SIGKILL) at the start of epoch 3
#: of the first attempt; torchrun then restarts every worker, which resume from the epoch-2 checkpoint
DIES_IN_EPOCH_3 = """
import os
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    import signal
    from tailshift.engine import Trainer
    original = Trainer._train_epoch
    def dies(self, stage, stage_index, epoch, *args):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, stage, stage_index, epoch, *args)
    Trainer._train_epoch = dies
"""
#: docs/large-scale.md's multi-node command, from multinode_torchrun_args with these values
DOCS_MULTINODE = dict(nnodes=2, nproc_per_node=8, endpoint="node0.example.com:29400", run_id="imagenet-lt-csa",
                      max_restarts=3, tailshift_args=["train", "table3/imagenet-lt_csa_resnet50",
                                                      "data.root=/data/imagenet",
                                                      "output=/shared/runs/imagenet-lt_csa_resnet50"])


def test_the_docs_multinode_command_is_the_one_the_two_node_test_runs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "large-scale.md").read_text()
    env = " ".join(f"{key}={value}" for key, value in RESTART_ENV.items())
    command = f"{env} torchrun {shlex.join(multinode_torchrun_args(**DOCS_MULTINODE))}"
    assert command in re.sub(r" \\\n\s*", " ", text)  # continued lines joined


def test_two_torchrun_agents_as_two_machines_train_what_one_process_trains_and_restart_exactly(runs, tmp_path):
    """Two torchrun agents on this machine as two "nodes" (c10d rendezvous on loopback, gloo, one
    process each), the docs' command. Rank 1 dies (SIGKILL) in epoch 3; both agents restart their
    workers, which resume from the checkpoint: the weights equal, bit for bit, those of the two
    processes that ran uninterrupted (``runs``), and those of one process within tolerance."""
    root, npz = runs
    config = tmp_path / "ce.yaml"
    config.write_text(json.dumps(base(npz, tmp_path / "run")))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DIES_IN_EPOCH_3)
    env = {**os.environ, **RESTART_ENV, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), SRC, os.environ.get("PYTHONPATH")]))}
    args = multinode_torchrun_args(2, 1, f"127.0.0.1:{free_port()}", "two-nodes", 1,
                                   ["train", str(config), "method.name=ce"])
    logs = [tmp_path / f"agent{i}.log" for i in range(2)]
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    try:
        codes = [agent.wait(timeout=180) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    assert any("(exitcode: -9)" in log.read_text() for log in logs)  # one worker was killed (SIGKILL), and restarted
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    for key, value in weights(root / "two" / "ce").items():
        assert torch.equal(weights(tmp_path / "run")[key], value), key
    one = train(build_config(base(npz, tmp_path / "one"), ["method.name=ce"]))
    for key, value in weights(tmp_path / "one").items():
        torch.testing.assert_close(weights(tmp_path / "run")[key].float(), value.float(), rtol=1e-3, atol=3e-4,
                                   msg=key)
    assert [e["loss"] for e in metrics["curve"]] == pytest.approx([e["loss"] for e in one["curve"]], rel=1e-3)


def test_processes_that_would_resume_from_different_epochs_are_refused(tmp_path):
    """A run folder local to each machine: rank 0 finds the checkpoint, another process does not."""
    class Elsewhere(World):
        def same_everywhere(self, value: int) -> bool:
            return False

    npz = write_npz(tmp_path / "tiny.npz")
    cfg = build_config(base(npz, tmp_path / "run"), ["method.name=ce", "train.epochs=1"])
    with pytest.raises(CheckpointMismatchError, match="every machine must see the same run folder"):
        Trainer(cfg, world=Elsewhere()).fit()
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_an_indexed_device_is_refused_for_several_processes_of_one_machine(monkeypatch):
    """torchrun's environment, no CUDA needed: refused before any process group is made."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^device=cuda:0 names one GPU for all 2 processes of this machine"):
        with launched("cuda:0"):
            pytest.fail("launched")
    check_device("cuda:0", 1)  # one process per machine (several machines): its GPU 0 is its own
    check_device("cuda", 8)


def test_on_cuda_the_process_group_is_bound_to_this_process_gpu(monkeypatch):
    """NCCL gets ``device_id`` (its communicators made eagerly, on the right GPU); no CUDA needed."""
    seen = {}

    def init(backend, **kwargs):
        seen.update(kwargs, backend=backend)
        raise InterruptedError  # stop before anything else

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.setdefault("set_device", device))
    monkeypatch.setattr(dist, "init_process_group", init)
    with pytest.raises(InterruptedError):
        with launched("cuda"):
            pytest.fail("launched")
    assert seen == {"backend": "nccl", "device_id": torch.device("cuda", 1), "set_device": torch.device("cuda", 1)}


def test_a_study_on_several_processes_refuses_an_indexed_device_before_any_run(tmp_path, monkeypatch):
    from tailshift.reproduce import jobs

    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *a, **k: pytest.fail("a run started"))
    config = tmp_path / "ce.yaml"
    config.write_text(json.dumps(base(write_npz(tmp_path / "tiny.npz"), tmp_path / "run")))
    runs = [jobs.Job("s", "ce", 0, str(config)), jobs.Job("s", "ce", 1, str(config), ("device=cuda:1",))]
    with pytest.raises(ConfigError, match="device=cuda:1 names one GPU for all 2 processes"):
        jobs.run_jobs_distributed(runs, 2)


def test_world_parts_and_steps():
    parts = [World(r, 3).part(10) for r in range(3)]
    assert parts == [(0, 4), (4, 7), (7, 10)]
    assert World().part(7) == (0, 7) and World().steps(177, 30) == 6
    assert World(0, 4).steps(182, 30) == 6  # a last batch of 2 rows cannot feed 4 processes: dropped
    with pytest.raises(ValueError, match="at least the number of processes"):
        World(0, 4).steps(100, 2)
    shard = BatchShard(4, 7, 10, World(1, 3))
    assert shard.split and shard.local(torch.arange(10)).tolist() == [4, 5, 6]
