"""CAM-based balance sampling (CAM-BS; Zhang et al., AAAI 2021, "Bag of Tricks for Long-Tailed Visual
Recognition"), as zhangyongshun/BagofTricks-LT@HEAD runs it on CIFAR-LT
(configs/cao_cifar/two_stage/drs/cam_based_sampling/{first_stage,cam_generation,second_stage/balance}).

Three stages, each the original's:

1. ``first``: plain CE on uniformly shuffled batches (first_stage/*.yaml lines 25-47: CrossEntropy,
   MAX_EPOCH 160, default sampler; the optimiser is the run's recipe, ``recipes/bag-of-tricks.yaml``).
2. ``cam-generation`` (a ``makes_data`` stage): class c gets n_max + n_min - n_c new images
   (lib/utils/cam_based_sampling.py line 36; the cap of lines 38-52, skipped for CIFAR, is ``number_cap``). Each copies
   a training image of its class drawn uniformly (line 79), takes the ground-truth CAM of the model
   as it ended stage 1 (``cam_image``: lib/net/network.py lines 189-212), keeps the pixels whose CAM is
   at least 3/4 of its mean as foreground (cam_based_sampling.py lines 84-85), and pastes a transformed
   copy of the image, kept where the foreground was or went, onto the image itself
   (``paste_foreground``): one of rotate-and-scale, translate or horizontal flip, chosen uniformly
   (lines 87-167). The original writes them as JPEG files plus a JSON list (lines 168-183,
   cam_generation/cifar10_im100.yaml lines 15-17); here they are a lossless uint8 array in the run folder
   (``engine.MADE_FOLDER``), recorded in the checkpoint and reused on resume.
3. ``second``: the whole network, from its stage-1 weights (second_stage/balance/*.yaml line 19, nothing
   frozen: network.py lines 102-149), on the training split plus the generated images, each drawn by
   class-balanced sampling: a class uniformly, then one of its images, original or generated, uniformly
   (lib/dataset/cao_cifar.py lines 55-69 and 101-111; an epoch is as long as the original split, line
   256-257). 40 epochs at lr 0.001 (second_stage/balance/cifar10_im100.yaml lines 36, 42), MultiStepLR x0.01
   from 1-based epoch 20 (lines 45-48; the scheduler steps before each epoch, main/train.py line 277): our
   0-based epoch 19. CIFAR-100 uses WarmupMultiStepLR there (cifar100_im100.yaml lines 46-50):
   ``recipes/bag-of-tricks-stage2-cifar100-lt.yaml``.

Where we differ, on purpose: the original computes the CAM of a training-augmented view (random crop
and flip: cao_cifar.py lines 36-41 and 207-211, network.py line 200), which misaligns the map with the
image it masks; we use the image itself. Its CAMs come from the stage-1 model with the best test accuracy
(cam_generation yaml line 22); we never choose on the test set and use the final one, which stage 2
starts from in the original too (second_stage yaml line 19). Its bounding box of the foreground takes
the first and the *second* row (and column) that hold foreground (lines 96-109), not the last; we
keep that, since it sets the rotation centre and translation range the reported numbers came from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cam import class_activation_map, normalize_cam
from ..fingerprint import added_later
from ..schedules import SCHEDULES
from ..validation import bounded, one_of
from .base import METHODS, MadeData, Method, Stage, StepContext, StepOutput, StreamRequest, TrainingImages
from .losses import LossOptions, loss_field

#: foreground: CAM >= this fraction of the map's mean (cam_based_sampling.py lines 84-85, 160-161)
FOREGROUND_FRACTION = 0.75
#: the transforms by index, as np.random.randint(0, 3) picks them (line 87)
TRANSFORMS = ("rotate-scale", "translate", "flip")


def generated_counts(class_counts, cap: int = 0) -> np.ndarray:
    """Images generated per class: n_max + n_min - n_c (cam_based_sampling.py line 36), so each class ends
    with n_max + n_min, the largest too. With ``cap`` > 0, the original's rule for every set but CIFAR
    (lines 38-52, ``CAM_NUMBER_THRES``): a class of at least ``cap`` images gets none, any other at most ``cap``."""
    counts = np.asarray(class_counts, dtype=np.int64)
    if counts.ndim != 1 or not len(counts) or counts.min() < 1:
        raise ValueError(f"CAM-based sampling needs at least one image of every class, got counts {counts.tolist()}")
    made = counts.max() + counts.min() - counts
    return made if cap == 0 else np.where(counts >= cap, 0, np.minimum(made, cap))


def cam_image(feature_map: torch.Tensor, classifier_weight: torch.Tensor, targets: torch.Tensor,
              size: tuple[int, int]) -> torch.Tensor:
    """The ground-truth CAM as network.py lines 205-212 make it: w_y . A (no bias, no ReLU), min-max
    scaled, truncated to uint8 (np.uint8(255 * cam)), resized bilinearly to the image (cv2.resize's
    default, half-pixel centres) and rounded. B x H x W floats holding integers 0..255."""
    cam = normalize_cam(class_activation_map(feature_map, classifier_weight, targets))
    cam = (cam * 255.0).floor_()
    return F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1).round_()


def foreground_mask(cam: torch.Tensor) -> torch.Tensor:
    """Pixels whose CAM is at least 3/4 of the map's mean (the rest is ``ignored_index``, line 85)."""
    return cam >= cam.mean(dim=(1, 2), keepdim=True) * FOREGROUND_FRACTION


def first_two(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a B x N bool tensor, the first and the second True position (-1 where there is none):
    the original's h_min / h_max (and w_min / w_max), whose loops stop at the second hit (lines 96-109)."""
    n = flags.shape[1]
    positions = torch.where(flags, torch.arange(n, device=flags.device), n)
    two = positions.topk(2, dim=1, largest=False).values
    two = torch.where(two == n, -1, two)
    return two[:, 0], two[:, 1]


def rotation_matrices(cx: torch.Tensor, cy: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """cv2.getRotationMatrix2D per image (B x 2 x 3, source -> destination pixel coordinates)."""
    rad = degrees * (math.pi / 180.0)
    a, b = scale * torch.cos(rad), scale * torch.sin(rad)
    return torch.stack([torch.stack([a, b, (1 - a) * cx - b * cy], 1),
                        torch.stack([-b, a, b * cx + (1 - a) * cy], 1)], 1)


def translation_matrices(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(dx), torch.zeros_like(dx)
    return torch.stack([torch.stack([one, zero, dx], 1), torch.stack([zero, one, dy], 1)], 1)


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """cv2.warpAffine's default on a batch: destination pixel p takes the source at M^-1 p, bilinear,
    0 outside the image (B x C x H x W floats; ``matrices`` B x 2 x 3 as cv2 takes them)."""
    b, _, h, w = images.shape
    inverse = torch.linalg.inv(matrices[:, :, :2].double())
    ys, xs = torch.meshgrid(torch.arange(h, device=images.device, dtype=torch.float64),
                            torch.arange(w, device=images.device, dtype=torch.float64), indexing="ij")
    dst = torch.stack([xs, ys], -1).view(1, h * w, 2) - matrices[:, None, :, 2].double()
    src = torch.einsum("bij,bpj->bpi", inverse, dst)  # B x HW x 2, pixel coordinates (x, y)
    grid = (src * torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=images.device, dtype=torch.float64)
            - 1.0).view(b, h, w, 2)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def draw_transforms(cam: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's transform (index into TRANSFORMS, line 87) and its matrix (B x 2 x 3; unused for a
    flip): rotation by randint(-45, 45) degrees and scale randint(80, 120) / 100 about the centre of the
    foreground box (lines 110-112), or a shift by randint(-w_min, w - w_max), randint(-h_min, h - h_max)
    (lines 144-146), the box as ``first_two`` finds it in the foreground CAM."""
    b, h, w = cam.shape
    u = torch.rand(5, b, generator=generator, device=cam.device, dtype=torch.float64)
    kinds = (u[0] * len(TRANSFORMS)).long()
    degrees = -45.0 + (u[1] * 90).floor()
    scale = (80.0 + (u[2] * 40).floor()) / 100.0
    held = (cam * foreground_mask(cam)) > 0
    h_min, h_max = first_two(held.any(dim=2))
    w_min, w_max = first_two(held.any(dim=1))
    rotate = rotation_matrices((w_min + w_max) / 2.0, (h_min + h_max) / 2.0, degrees, scale)
    dx = -w_min + (u[3] * (w - w_max + w_min)).floor()
    dy = -h_min + (u[4] * (h - h_max + h_min)).floor()
    shift = translation_matrices(dx.double(), dy.double())
    return kinds, torch.where((kinds == 0).view(b, 1, 1), rotate, shift)


def paste_foreground(images: torch.Tensor, cam: torch.Tensor, kinds: torch.Tensor,
                     matrices: torch.Tensor) -> torch.Tensor:
    """The generated images (uint8 B x C x H x W), lines 88-167 on a batch: the image transformed (warped
    by ``matrices``, or flipped where ``kinds`` is 2), kept where the foreground was or where the
    transformed foreground CAM is non-zero (for a flip: the flipped map's own threshold), 0 elsewhere;
    wherever that layer is non-zero (per channel) it replaces the image, elsewhere the image stays."""
    x = images.float()
    fg = foreground_mask(cam)
    warped = warp(torch.cat([x, (cam * fg).unsqueeze(1)], 1), matrices.to(x.dtype)).round_()
    flip = (kinds == 2).view(-1, 1, 1)
    moved = torch.where(flip.unsqueeze(1), x.flip(-1), warped[:, :-1])
    moved_fg = torch.where(flip, fg.flip(-1), warped[:, -1] != 0)
    layer = moved * (fg | moved_fg).unsqueeze(1)
    return torch.where(layer != 0, layer, x).to(torch.uint8)


@METHODS.register("cam-bs")
class CamBalanceSampling(Method):
    """CE, then CAM-generated images that balance the classes, then class-balanced fine-tuning on both."""

    reads_feature_map = "CAM"

    @dataclass
    class Params(LossOptions):
        loss: str = loss_field("ce")  # both stages: CrossEntropy (first_stage yaml lines 25-26, second_stage 31-32)
        # stage 2 (second_stage/balance/cifar10_im100.yaml): MAX_EPOCH 40 (line 36), BASE_LR 0.001 (line 42),
        # multistep LR_STEP [20] x LR_FACTOR 0.01 (lines 46-48) as a step from 0-based epoch 19 (module docstring)
        second_epochs: int = bounded(40, ge=1)
        second_lr: float = bounded(0.001, gt=0)
        second_schedule: str = one_of("step", SCHEDULES)
        second_milestones: tuple[int, ...] = bounded((19,), ge=0)
        second_gamma: float = bounded(0.01, gt=0)
        # generated images per class capped (generated_counts): 0, none, as the original on CIFAR; it caps every
        # other set, e.g. at 100 on ImageNet-LT (IM-DRSwithCAMbasedsampling-Finetune/cam_generation.yaml line 16)
        number_cap: int = added_later(bounded(0, ge=0, note="0: no cap"), neutral=0)

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        if not backbone.pooled_linear:  # CAM = w_y . A needs logits that are a linear map of the pooled A
            raise ValueError(f"method cam-bs needs a backbone whose embed is global average pooling (CAM, "
                             f"network.py line 205); {type(backbone).__name__} is not")
        self.head = backbone.new_head(num_classes)
        self.loss = self.params.build_loss("loss", class_counts)

    def stages(self) -> list[Stage]:
        p = self.params
        return [
            Stage("first", self.epochs, {"main": StreamRequest("uniform")}),
            Stage("cam-generation", 0, {}, makes_data=True),
            # the original's "balance" weighted sampler: i.i.d. draws, a class uniformly (q = 0), then an image
            Stage("second", p.second_epochs, {"main": StreamRequest("power", q=0.0)}, lr=p.second_lr,
                  schedule=p.second_schedule, warmup=False, milestones=p.second_milestones, gamma=p.second_gamma),
        ]

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        return StepOutput(self.loss(self.head(self.backbone(batch.x)), batch.y))

    def heads(self):
        return {self.default_head: self.head}

    @torch.no_grad()
    def make_data(self, stage: Stage, images: TrainingImages, generator: torch.Generator) -> MadeData:
        self.eval()  # network.py line 198
        arrays = images.arrays
        labels = arrays.labels
        counts = torch.bincount(labels, minlength=self.num_classes)
        made = generated_counts(counts.cpu().numpy(), self.params.number_cap)
        made_labels = torch.repeat_interleave(torch.arange(self.num_classes, device=labels.device),
                                              torch.as_tensor(made, device=labels.device))
        # line 79: each generated image copies a uniformly drawn image of its class
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        u = torch.rand(len(made_labels), generator=generator, device=labels.device, dtype=torch.float64)
        sources = order[starts[made_labels] + (u * counts[made_labels]).long()]
        cams = self._cams(arrays, images.batch_size)
        return MadeData(made_labels.cpu().numpy(), self._generate(arrays.images, cams, sources, images.batch_size,
                                                                  generator))

    def _cams(self, arrays, batch_size: int) -> torch.Tensor:
        """The ground-truth CAM of every training image (uint8 N x H x W), one forward per image rather
        than per generated copy."""
        size = tuple(arrays.images.shape[-2:])
        out = torch.empty((len(arrays), *size), dtype=torch.uint8, device=arrays.images.device)
        for start in range(0, len(arrays), batch_size):
            rows = slice(start, start + batch_size)
            feature_map = self.backbone.feature_map(arrays.normalise(arrays.images[rows]))
            out[rows] = cam_image(feature_map, self.head.weight, arrays.labels[rows], size).to(torch.uint8)
        return out

    @torch.no_grad()
    def _generate(self, images: torch.Tensor, cams: torch.Tensor, sources: torch.Tensor, batch_size: int,
                  generator: torch.Generator):
        for start in range(0, len(sources), batch_size):
            index = sources[start:start + batch_size]
            cam = cams[index].float()
            kinds, matrices = draw_transforms(cam, generator)
            yield paste_foreground(images[index], cam, kinds, matrices)
