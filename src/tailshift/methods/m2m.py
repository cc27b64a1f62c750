"""M2m: imbalanced classification via major-to-minor translation (Kim, Jeong and Shin, CVPR 2020).

Followed from the authors' code, alinlab/M2m (``train.py``, ``config.py``, ``utils.py``, ``data_loader.py``,
``README.md`` and ``run.sh`` line 34, the M2m command, the source of every default below):

- **g**, the classifier that judges a translation, is a separate network trained by plain ERM on the
  long-tailed set for the whole schedule (README.md lines 18-21: ``--no_over --warm 200 --epoch 200``), then
  loaded from its checkpoint and frozen (train.py lines 325-329, ``net_g.eval()`` at line 233). Here it is
  the run's first stage, ``generator`` (``generator_epochs``, default the run's epochs, on the run's recipe, CE
  on uniform batches), a backbone of its own with its own head, kept in the checkpoint with everything
  else, so a run is one folder and resumes exactly, g included. A parameter naming a finished CE run would
  make this run depend on files outside its folder and its fingerprint, and the table's jobs run in parallel
  with no order between them. g's backbone is built apart from f's (``judge_init=independent``), as the
  authors' g is another run under another random seed (config.py line 30 and lines 79-84: without ``--seed``,
  which run.sh never gives, each run draws its own); ``shared`` starts it from f's initial weights, as runs
  before the option did.
  Departure: g is g's final epoch (the authors keep the best epoch on a validation split of the test set,
  train.py lines 399-408; their shipped checkpoint/erm_r100_c10_trial1.t7 is epoch 180 of 200).
- **f**, the classifier trained (stage ``train``), starts afresh (``-r`` with ``--net_g`` only: train.py lines
  307-329 load g, not f) and trains by ERM on uniform batches until ``start_epoch`` (``--warm 160``, run.sh;
  train.py line 386), then on re-sampled batches, each sample drawn with weight 1 / n_y, N draws an epoch
  (train.py lines 348-356 switch to ``get_oversampled``, data_loader.py lines 59-78 and 133-134: a
  ``WeightedRandomSampler``; here the ``power`` stream with q = 0, whatever ``sampling.balanced`` says).
  One stage, because the recipe's milestones (160, 180) count f's epochs.
- **Which rows are translated, to which class** (train.py lines 249-252): row i of a re-sampled batch is
  replaced with probability 1 - n_{y_i} / n_max by a sample translated *to its own class* y_i; its label
  stays y_i (train.py lines 191-192 write ``gen_targets``, which are ``targets[gen_index]``).
- **The seed** (train.py lines 156-170): for target class k, a row j of the same batch with
  P(j) proportional to 1 - beta^(n_{y_j} - n_k)^+ (``beta`` 0.999, run.sh); a target with no larger class in
  the batch is left as it is (``mask_valid``).
- **The attack** (train.py lines 113-134, utils.py lines 171-188): from the seed x0 in pixels, a random start
  ``(U - 1/2).renorm(p=2, dim=1, maxnorm=0.5)`` (dim 1: each channel's slice over the translated rows, as
  written), clamped to [0, 1]; ``attack_iter`` (10) steps of
  x <- clamp(x - eta * grad / (||grad||_2 + 1e-10), 0, 1), per row, eta = ``step_size`` (0.1), on
  L = CE(g(x), k) + lam * mean_i f(x)_{y_seed,i} (train.py lines 107-110 redefine ``classwise_loss`` over the
  one in utils.py: the mean seed-class logit), lam 0.5; g and f both in eval mode (train.py lines 115-116, 143).
  Pixels: the images arrive normalised (``data.mean``/``data.std``); the attack runs on
  x * std + mean and hands back (x - mean) / std, clamping before normalising (utils.py lines 46-49).
- **Rejection** (train.py lines 136-142): accepted when g's softmax probability of k is at least ``gamma``
  (0.9, run.sh; config.py line 52's default is 0.99) and a Bernoulli draw with the seed's 1 - beta^(n_seed - n_k)
  succeeds; a rejected row keeps its re-sampled image.
- **The loss**: the mean of ``loss`` (CE, run.sh) over the batch with the accepted rows replaced (train.py
  lines 194-199).

The recipe is Cao et al.'s (config.py lines 163-176: lr 0.1, 5 warm-up epochs, x0.01 at 160 and again at
180; run.sh: batch 128, weight decay 2e-4; train.py line 305: SGD, momentum 0.9): ``recipes/ldam.yaml``.
The authors give one script (run.sh: CIFAR-10-LT, rho 100); the same settings serve every dataset and rho.

Every draw comes from the step's generator, in the authors' order (rows, seeds, random start, acceptance),
so a run resumes exactly. Translations live only within their step, as in the original: nothing is cached.
On several processes, each translates within its own rows of the batch.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..fingerprint import added_later
from ..validation import bounded, one_of
from .base import METHODS, Method, Stage, StepContext, StepOutput, StreamRequest
from .losses import LossOptions, loss_field

#: the random start's L2 bound (train.py line 120: ``random_perturb(inputs, 'l2', 0.5)``)
RANDOM_START = 0.5


def translated_rows(labels: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rows of a re-sampled batch to replace by a sample translated to their class: each with probability
    1 - n_y / n_max (train.py lines 249-251)."""
    kept = torch.bernoulli(counts[labels] / counts.max(), generator=generator)
    return (kept == 0).nonzero().view(-1)


def seed_weights(labels: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor, beta: float) -> torch.Tensor:
    """(targets x batch) 1 - beta^(n_{y_j} - n_k)^+: the weight of row j as the seed of target class k, and the
    probability that its translation is kept (train.py lines 156-160)."""
    return 1 - beta ** F.relu(counts[labels][None, :] - counts[targets][:, None])


def attack(judge, trained, images: torch.Tensor, seed_labels: torch.Tensor, targets: torch.Tensor, lam: float,
           step_size: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Translate ``images`` (pixels in [0, 1]) towards ``targets``: random start, then ``steps`` normalised
    gradient steps on CE(judge(x), k) + lam * mean seed-class logit of ``trained`` (train.py lines 119-134).
    ``judge`` and ``trained`` map pixels to logits."""
    noise = (torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype) - 0.5)
    x = torch.clamp(images + noise.renorm(p=2, dim=1, maxnorm=RANDOM_START), 0, 1)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        seed_logits = trained(x).float().gather(1, seed_labels[:, None])
        loss = F.cross_entropy(judge(x).float(), targets) + lam * seed_logits.mean()
        grad, = torch.autograd.grad(loss, [x])
        norm = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1))
        x = torch.clamp(x - step_size * grad / (norm + 1e-10), 0, 1)
    return x.detach()


def accepted(judge_logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, gamma: float,
             generator: torch.Generator) -> torch.Tensor:
    """The rejection rule (train.py lines 138-142): g's softmax probability of the target at least ``gamma``,
    and a Bernoulli draw with probability ``keep`` (the seed's weight) succeeds."""
    confident = torch.softmax(judge_logits.float(), dim=1).gather(1, targets[:, None]).view(-1) >= gamma
    return confident & (torch.bernoulli(keep, generator=generator) > 0)


@contextmanager
def evaluating(*modules: nn.Module):
    """Modules in eval mode for the block, then back to the mode each had."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@METHODS.register("m2m")
class MajorToMinor(Method):
    """M2m: a first stage trains the judge g by ERM; f then trains by ERM until ``start_epoch``, afterwards on
    re-sampled batches whose minority rows are replaced, when accepted, by majority seeds translated against g
    (the module docstring gives each rule's source)."""

    @dataclass
    class Params(LossOptions):
        loss: str = loss_field("ce")  # f's loss (train.py lines 374-382; run.sh: CE); g trains with CE
        generator_epochs: int | None = bounded(None, ge=1, note="None: train.epochs")  # README.md: --epoch 200
        start_epoch: int = bounded(160, ge=0)  # --warm 160 (run.sh)
        beta: float = bounded(0.999, gt=0, lt=1)  # --beta 0.999 (run.sh)
        lam: float = bounded(0.5, ge=0)  # --lam 0.5 (run.sh)
        gamma: float = bounded(0.9, ge=0, le=1)  # --gamma 0.9 (run.sh)
        step_size: float = bounded(0.1, gt=0)  # --step_size 0.1 (run.sh)
        attack_iter: int = bounded(10, ge=1)  # --attack_iter 10 (run.sh)
        # g's backbone: built apart from f's (independent), or a copy of f's initial one (shared); module docstring
        judge_init: str = added_later(one_of("independent", ("independent", "shared")), neutral="shared")

    default_head = "main"

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.loss = self.params.build_loss("loss", class_counts)
        self.head = backbone.new_head(num_classes)
        self.judge = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": backbone.new_head(num_classes)})

    def take_independent_backbone(self, build) -> None:
        if self.params.judge_init == "independent":
            self.judge["backbone"] = build()

    def stages(self) -> list[Stage]:
        streams = {"main": StreamRequest("uniform"), "resampled": StreamRequest("power", 0.0)}
        return [Stage("generator", self.params.generator_epochs or self.epochs, {"main": StreamRequest("uniform")}),
                Stage("train", self.epochs, streams, driver="main")]

    def trained(self, stage: Stage) -> list[nn.Module]:
        """The modules a stage trains: g in ``generator``, f (backbone, head, the loss) in ``train``."""
        return [self.judge] if stage.name == "generator" else [self.backbone, self.head, self.loss]

    def begin_stage(self, stage: Stage, fresh: bool) -> None:
        self.requires_grad_(False)
        for module in self.trained(stage):
            module.requires_grad_(True)

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        return list(nn.ModuleList(self.trained(stage)).parameters())

    def train_mode(self, stage: Stage) -> None:
        self.train()
        if stage.name != "generator":
            self.judge.eval()

    def judge_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.judge["head"](self.judge["backbone"](x))

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_mean is None else x * self.input_std + self.input_mean

    def normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = torch.clamp(pixels, 0, 1)
        return pixels if self.input_mean is None else (pixels - self.input_mean) / self.input_std

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        if ctx.stage.name == "generator":
            batch = batches["main"]
            return StepOutput(F.cross_entropy(self.judge_logits(batch.x), batch.y))
        if ctx.epoch < self.params.start_epoch:
            batch = batches["main"]
            zero = torch.zeros((), device=batch.x.device)
            return StepOutput(self.loss(self.head(self.backbone(batch.x)), batch.y),
                              {"attempted": zero, "translated": zero})
        x, y, attempted, translated = self.translate(batches["resampled"].x, batches["resampled"].y, ctx.generator)
        return StepOutput(self.loss(self.head(self.backbone(x)), y), {"attempted": attempted, "translated": translated})

    def translate(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """The batch with its accepted translations in place (train.py lines 148-192), and the shares of rows
        attempted and replaced."""
        p = self.params
        counts = self.class_counts
        rows = translated_rows(y, counts, generator)
        targets = y[rows]
        weights = seed_weights(y, targets, counts, p.beta)
        valid = weights.sum(1) > 0
        rows, targets, weights = rows[valid], targets[valid], weights[valid]
        share = x.new_zeros(())
        if len(rows) == 0:
            return x, y, share, share
        seeds = torch.multinomial(weights, 1, replacement=True, generator=generator).view(-1)
        keep = weights.gather(1, seeds[:, None]).view(-1)
        with evaluating(self.backbone, self.head):
            images = attack(lambda v: self.judge_logits(self.normalised(v)),
                            lambda v: self.head(self.backbone(self.normalised(v))),
                            self.pixels(x[seeds]), y[seeds], targets, p.lam, p.step_size, p.attack_iter, generator)
            with torch.no_grad():
                ok = accepted(self.judge_logits(self.normalised(images)), targets, keep, p.gamma, generator)
        x = x.clone()
        x[rows[ok]] = self.normalised(images[ok]).to(x.dtype)
        return x, y, share + len(rows) / len(y), ok.sum() / len(y)

    def heads(self):
        return {"main": self.head}
