"""TensorBoard logging of a run (``train.tensorboard=true``, the ``tailshift[tensorboard]`` extra).

Per epoch: the loss, the rate, the method's own step logs (CSA: each branch's loss, the share of
fused steps, the bank's fill), and at each evaluation every head's All/Many/Med/Few and, when the
training split is on the device, the method's ``illustration`` (CSA: its grid of contexts and fused
images, as Figure 5). The event files go to ``<output>/tensorboard``, written by TensorBoard's own writer.
"""
from __future__ import annotations

import numpy as np
import torch

from .validation import ConfigError

INSTALL_HINT = "train.tensorboard=true needs the tensorboard package: pip install tailshift[tensorboard]"
#: record keys that are not step logs of the method
NOT_LOGS = ("stage", "epoch", "seconds", "test", "lr", "loss")


def require_tensorboard():
    """TensorBoard's writer class, or a one-line error saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return SummaryWriter


def rows_to_grid(rows: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Rows of uint8 N x C x H x W images (C = 1 or 3) as one 3 x (rows H) x (N W) image."""
    lines = [np.concatenate(list(np.broadcast_to(images, (len(images), 3, *images.shape[2:]))), axis=2)
             for _, images in rows]
    return np.concatenate(lines, axis=1)


class TensorBoardLog:
    """Writes a trainer's epochs as TensorBoard scalars (and images at evaluations); epochs are
    numbered across stages from ``first_epoch`` (the epochs a resumed run has already logged)."""

    def __init__(self, trainer, first_epoch: int = 0):
        self.trainer = trainer
        self.writer = require_tensorboard()(log_dir=str(trainer.out / "tensorboard"), purge_step=first_epoch + 1)
        self.step = first_epoch

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def epoch_end(self, record: dict, epochs: int) -> None:
        self.step += 1
        add = self.writer.add_scalar
        add("train/loss", record["loss"], self.step)
        add("train/lr", record["lr"], self.step)
        add("train/seconds", record["seconds"], self.step)
        for key, value in record.items():
            if key not in NOT_LOGS:
                add(f"train/{key}", value, self.step)
        for head, groups in record.get("test", {}).items():
            for group, value in groups.items():
                if value is not None:
                    add(f"test/{head}/{group}", value, self.step)
        if "test" in record:
            self._illustration()
        self.writer.flush()

    def _illustration(self) -> None:
        """The method's illustration with the current model, if it has one (yet); training is unchanged."""
        images = self.trainer.training_images()
        if images is None:  # on the host, decoded by loader workers: no images to gather by index
            return
        device = self.trainer.device
        # a crop-flipped split draws its crops from the global generator: leave it as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            rows = self.trainer.method.illustration(images)
        if rows:
            self.writer.add_image("illustration", rows_to_grid(rows), self.step, dataformats="CHW")
