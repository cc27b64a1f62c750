"""Host loading: the split stays on the host (in memory or as image files) and loader worker
processes decode and augment its batches, for data that does not fit on the device.

The engine asks a feed for an epoch of batches given the samplers' index streams (the
same call a ``DeviceArrays`` answers), so samplers and methods, CSA included, do not
change. A torch ``DataLoader`` runs over *requests*, one per step: this process's rows of
every stream's global batch. Its worker processes decode and augment the images
(``transforms``), the batches come back pinned (on CUDA) and are copied with
``non_blocking``, then normalised on the device.

Each image's random augmentation is drawn from its own generator seeded with (run seed,
stage, epoch, stream, position in the epoch), so a run is reproducible whatever the
number of workers or processes, and resumes exactly at an epoch boundary.

``make_feeds`` picks the storage: ``device`` (the whole split as one uint8 tensor on the
device, ``pipeline.DeviceArrays``) or ``host`` (the split on the host, batches decoded by
loader workers, ``HostFeed``); ``auto`` keeps decoded in-memory data on the device when it
fits there and loads image files from the host.
"""
from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ..distributed import World
from .arrays import ArrayDataset, DataError
from .lists import FileDataset
from .pack import Pack
from .pipeline import Batch, DeviceArrays, batch_plan, epoch_length, normalise
from .color import color_jitter
from .device_decode import DeviceDecodedImages, gpu_jpeg_decoder
from .transforms import (JITTER_DRAWS, EvalViews, crop_flip, from_chw, open_train_image, pillow_color_jitter,
                         resized_crop_box, to_8bit, to_chw, train_crop)

STORAGES = ("auto", "device", "host")
#: augmentations by kind of dataset (device and host storage agree on these)
ARRAY_AUGMENTATIONS = ("none", "crop_flip", "resized_crop")
FILE_AUGMENTATIONS = ("none", "resized_crop")
#: share of the free device memory a decoded dataset may take for ``auto`` to keep it there
DEVICE_SHARE = 0.5


#: an image's draws when the device has nothing to apply
NO_DRAWS = np.zeros(0, np.float32)


class StackedImages:
    """Images of one shape, a batch of them one uint8 array, with the per-image draws the device
    applies (``draws`` columns; 0: none)."""

    draws = 0

    def collate(self, items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A worker's batch: (uint8 images, draws)."""
        draws = np.stack([d for _, d in items]) if self.draws else np.zeros((len(items), 0), np.float32)
        return torch.from_numpy(np.stack([image for image, _ in items])), torch.from_numpy(draws)

    def finish(self, parts: tuple, device: torch.device) -> torch.Tensor:
        """The batch on ``device``, as uint8 images, its draws applied."""
        raw, draws = parts
        raw = raw.to(device, non_blocking=True)
        return color_jitter(raw, draws.to(device, non_blocking=True)) if draws.shape[1] else raw


class ArrayImages(StackedImages):
    """Rows of an in-memory uint8 dataset (host memory, not the device): as stored, crop-flipped, or through
    the image-file recipes, ``resized_crop`` to ``crop_size`` (``jitter`` applied here) to train and ``views``
    (resize and crop, or LIFT's five crops) to test: how LIFT trains on CIFAR at 224."""

    def __init__(self, data: ArrayDataset, augment: str = "none", padding: int = 4, crop_size: int = 224,
                 jitter: float = 0.0, views: EvalViews | None = None):
        self.data, self.augment, self.padding = data, augment, padding
        self.crop_size, self.jitter, self.views = crop_size, jitter, views
        channels = data.images.shape[1]
        side = crop_size if augment == "resized_crop" else None if views is None else views.size
        self.shape = data.images.shape[1:] if side is None else (channels, side, side)

    def __len__(self) -> int:
        return len(self.data)

    def labels(self) -> np.ndarray:
        return self.data.labels

    def image(self, i: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """The image, and no draws for the device."""
        image = self.data.images[i]
        if self.augment == "crop_flip":
            return crop_flip(image, self.padding, rng), NO_DRAWS
        if self.augment == "resized_crop":
            img = from_chw(image)
            left, top, w, h = resized_crop_box(img.width, img.height, rng)
            img, draws = train_crop(img, (left, top, left + w, top + h), self.crop_size, self.jitter, rng)
            return to_chw(img if draws is None else pillow_color_jitter(img, draws)), NO_DRAWS
        return (image if self.views is None else self.views(from_chw(image))), NO_DRAWS


class FileImages(StackedImages):
    """Image files decoded with Pillow, or read from a ``pack`` of them: the train recipe
    (``resized_crop``) or the test one. ``jitter_on_device``: the colour jitter is drawn here and
    applied by the feed on the device (``data.color``; for a GPU, where it costs next to nothing),
    else here with Pillow."""

    def __init__(self, data: FileDataset, augment: str, crop_size: int, resize_size: int, jitter: float,
                 jitter_on_device: bool = False, pack: Pack | None = None, tte: str = "none", tte_resize_size: int = 248):
        self.data, self.augment = data, augment
        self.views = EvalViews(resize_size, crop_size, tte, tte_resize_size)
        self.crop_size, self.resize_size, self.jitter = crop_size, resize_size, jitter
        self.pack = pack
        self.pack_rows = None if pack is None else pack.rows(data, resize_size)
        self.shape = (3, crop_size, crop_size)
        self.draws = JITTER_DRAWS if jitter_on_device and augment == "resized_crop" and jitter > 0 else 0

    def __len__(self) -> int:
        return len(self.data)

    def labels(self) -> np.ndarray:
        return self.data.labels

    def image(self, i: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """The image as uint8 C x H x W, and its jitter draws when the device applies them."""
        path = self.data.path(i)
        try:
            if self.augment != "resized_crop":
                return self.views(self._whole(i)), NO_DRAWS
            if self.pack is None:
                img, box = open_train_image(path, self.crop_size, rng)
            else:
                img = self._whole(i)
                left, top, w, h = resized_crop_box(img.width, img.height, rng)
                box = (left, top, left + w, top + h)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"cannot decode image {path}: {e}") from None
        img, draws = train_crop(img, box, self.crop_size, self.jitter, rng)
        if draws is None:
            return to_chw(img), NO_DRAWS
        if self.draws:
            return to_chw(img), draws
        return to_chw(pillow_color_jitter(img, draws)), NO_DRAWS

    def _whole(self, i: int) -> Image.Image:
        """Image ``i`` in RGB: from the pack, or decoded from its file."""
        if self.pack is not None:
            return self.pack.image(self.pack_rows[i])
        with Image.open(self.data.path(i)) as img:
            return to_8bit(img, "RGB")


class _Decoder(Dataset):
    """What runs in the workers: a request -> {stream: (*the images' ``collate`` parts, labels, indices)}.

    A request is (seed, ((stream, indices, first position), ...)); seed None: no random
    augmentation. A data error comes back as its message (re-raised as one line by the feed).
    """

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, request):
        seed, parts = request
        labels = self.images.labels()
        try:
            out = {}
            for name, index, first in parts:
                key = zlib.crc32(name.encode())
                items = [self.images.image(int(i), None if seed is None else np.random.default_rng([seed, key, first + j]))
                         for j, i in enumerate(index)]
                out[name] = (*self.images.collate(items), torch.from_numpy(labels[index]), torch.from_numpy(index))
            return out
        except DataError as e:
            return str(e)


class _Requests(torch.utils.data.Sampler):
    """The loader's sampler: the current pass's requests (replaced before each pass, so
    persistent workers serve every epoch)."""

    def __init__(self):
        self.requests: list = []

    def __iter__(self):
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)


class HostFeed:
    """Batches of one split held on the host (in memory or as image files), decoded and augmented
    by ``workers`` loader processes (0: in this process). ``persistent``:
    the workers live as long as the feed (training); else they start for each pass (evaluation,
    so a process does not keep two idle pools)."""

    storage = "host"
    memory_format = torch.channels_last  # of the float batches, as DeviceArrays

    def __init__(self, images, device: torch.device, mean=None, std=None, augmented: bool = False,
                 workers: int = 4, prefetch: int = 2, persistent: bool = True):
        self.images = images
        self.device = torch.device(device)
        self.augmented = augmented
        channels = images.shape[0]
        self.mean = None if mean is None else torch.tensor(mean, device=self.device).view(1, channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=self.device).view(1, channels, 1, 1)
        self._requests = _Requests()
        self.loader = DataLoader(_Decoder(images), batch_size=None, sampler=self._requests, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=persistent and workers > 0,
                                 prefetch_factor=prefetch if workers > 0 else None)

    def __len__(self) -> int:
        return len(self.images)

    def _run(self, requests: list, augmented: bool) -> Iterator[dict[str, Batch]]:
        self._requests.requests = requests
        for item in self.loader:
            if isinstance(item, str):
                raise DataError(item)
            yield {name: self._to_device(parts, augmented) for name, parts in item.items()}

    def _to_device(self, parts: tuple, augmented: bool) -> Batch:
        *images, labels, index = parts
        raw = self.images.finish(tuple(images), self.device)
        views = raw.shape[1] if raw.ndim == 5 else 1  # test-time ensembling: B x V x C x H x W, each image's views in a row
        return Batch(normalise(raw.flatten(0, 1) if views > 1 else raw, self.mean, self.std, self.memory_format),
                     labels.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True), augmented,
                     views=views)

    def epoch(self, indices: dict[str, torch.Tensor], steps: int, batch_size: int, seed: int,
              world: World = World()) -> Iterator[dict[str, Batch]]:
        """As ``DeviceArrays.epoch``: each step's batches (this process's rows), augmented per image."""
        arrays = {name: idx.numpy() for name, idx in indices.items()}
        requests = [(seed, tuple((name, idx[lo + start: lo + stop], lo + start) for name, idx in arrays.items()))
                    for lo, hi, start, stop in batch_plan(epoch_length(indices), steps, batch_size, world)]
        return self._run(requests, self.augmented)

    def iterate(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Sequential batches of rows [start, stop), no random augmentation (evaluation)."""
        stop = len(self) if stop is None else stop
        requests = [(None, (("eval", np.arange(first, min(first + batch_size, stop)), first),))
                    for first in range(start, stop, batch_size)]
        return (item["eval"] for item in self._run(requests, False))


def choose_storage(storage: str, train, test, device: torch.device, augment: str = "none") -> str:
    """``device`` or ``host`` for a dataset; ``auto``: image files, and in-memory arrays under the image-file
    recipe (``augment="resized_crop"``, which Pillow runs), stay on the host (decoded by loader workers),
    other in-memory arrays go to the device when they take less than ``DEVICE_SHARE`` of its free memory
    (else they stay on the host too)."""
    if storage not in STORAGES:
        raise DataError(f"data.storage must be one of {', '.join(STORAGES)}; got {storage!r}")
    files = isinstance(train, FileDataset)
    if storage == "device" and files:
        raise DataError("data.storage=device needs a dataset decoded in memory; this one is read from "
                        "image files (use data.storage=host or auto)")
    if storage == "device" and augment == "resized_crop":
        raise DataError("data.augment=resized_crop resizes images on the host (loader workers): use data.storage=host "
                        "or auto")
    if storage != "auto":
        return storage
    if files or augment == "resized_crop":
        return "host"
    if device.type != "cuda":
        return "device"
    free, _ = torch.cuda.mem_get_info(device)
    return "device" if train.images.nbytes + test.images.nbytes < DEVICE_SHARE * free else "host"


def make_feeds(train, test, device: torch.device, data_cfg,
               memory_format: torch.memory_format = torch.channels_last) -> tuple:
    """The train and test feeds of a run's data (``DeviceArrays`` or ``HostFeed``), whose float
    batches are in ``memory_format``."""
    feeds = _feeds(train, test, device, data_cfg)
    for feed in feeds:
        feed.memory_format = memory_format
    return feeds


def plain_feed(split, device: torch.device, data_cfg, memory_format: torch.memory_format = torch.channels_last):
    """A feed of ``split`` (e.g. the training one) under the eval recipe resized straight to the input size (LIFT's
    ``transform_plain``, Resize and CenterCrop to the resolution: shijxcs/LIFT trainer.py lines 109-114), one view
    an image: what ``model.init_head=class_mean`` averages. Images held as they are stay as they are."""
    d = data_cfg
    files = isinstance(split, FileDataset)
    storage = choose_storage(d.storage, split, split, device, d.augment)
    if storage == "device":
        feed = DeviceArrays(split, device, d.mean, d.std)
    else:
        views = EvalViews(d.crop_size, d.crop_size)
        images = (FileImages(split, "none", d.crop_size, d.crop_size, 0.0, pack=None if d.pack is None else Pack(d.pack))
                  if files else ArrayImages(split, views=views if d.augment == "resized_crop" else None))
        feed = HostFeed(images, device, d.mean, d.std, False, d.workers, persistent=False)
    feed.memory_format = memory_format
    return feed


def _feeds(train, test, device: torch.device, data_cfg) -> tuple:
    d = data_cfg
    storage = choose_storage(d.storage, train, test, device, d.augment)
    files = isinstance(train, FileDataset)
    if d.tte != "none" and not (files or d.augment == "resized_crop"):
        raise DataError(f"data.tte={d.tte} views images through the eval recipe's resize: it needs image files or "
                        f"data.augment=resized_crop, got data.augment={d.augment}")
    allowed = FILE_AUGMENTATIONS if files else ARRAY_AUGMENTATIONS
    if d.augment not in allowed:
        kind = "image files" if files else "in-memory arrays"
        raise DataError(f"data.augment={d.augment} does not apply to {kind}; use one of {', '.join(allowed)}")
    if d.pack is not None and not files:
        raise DataError(f"data.pack={d.pack} applies to datasets of image files; {d.dataset} is decoded in memory")
    if d.decode == "gpu":
        if not files:
            raise DataError(f"data.decode=gpu decodes image files; {d.dataset} is decoded in memory")
        if d.augment != "resized_crop":
            raise DataError(f"data.decode=gpu runs the train recipe data.augment=resized_crop; got {d.augment}")
        if d.pack is not None:
            raise DataError(f"data.decode=gpu and data.pack={d.pack} exclude each other: a pack holds decoded pixels")
    if storage == "device":
        return (DeviceArrays(train, device, d.mean, d.std, d.augment, d.padding),
                DeviceArrays(test, device, d.mean, d.std))
    if files:
        pack = None if d.pack is None else Pack(d.pack)
        train_images = (DeviceDecodedImages(train, d.crop_size, d.color_jitter, gpu_jpeg_decoder(device))
                        if d.decode == "gpu" else
                        FileImages(train, d.augment, d.crop_size, d.resize_size, d.color_jitter,
                                   jitter_on_device=device.type == "cuda", pack=pack))
        test_images = FileImages(test, "none", d.crop_size, d.resize_size, d.color_jitter, pack=pack, tte=d.tte,
                                 tte_resize_size=d.tte_resize_size)
    else:
        views = EvalViews(d.resize_size, d.crop_size, d.tte, d.tte_resize_size) if d.augment == "resized_crop" else None
        train_images = ArrayImages(train, d.augment, d.padding, d.crop_size, d.color_jitter)
        test_images = ArrayImages(test, views=views)
    return (HostFeed(train_images, device, d.mean, d.std, d.augment != "none", d.workers),
            HostFeed(test_images, device, d.mean, d.std, False, d.workers, persistent=False))
