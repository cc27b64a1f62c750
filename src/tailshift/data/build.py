"""Config -> the long-tailed training set, its test set and the class groups."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..config import DataConfig
from .arrays import ArrayDataset, DataError
from .checks import check_longtail
from .context import PALETTES, make_coloured_test, make_coloured_train
from .groups import class_groups
from .lists import FileDataset, ListOptions
from .longtail import make_longtail
from .sources import load_dataset


@dataclass(frozen=True)
class PreparedData:
    train: ArrayDataset | FileDataset
    test: ArrayDataset | FileDataset
    num_classes: int
    groups: dict[str, np.ndarray]
    #: training labels before label noise (coloured sets); None when there is no noise
    noise_free_labels: np.ndarray | None = None
    #: where the files were read from, and why results on them may differ (see SplitDataset)
    source: str = ""
    caveat: str = ""
    #: C x H x W the network sees when it is not the stored images' shape (image files, resized_crop: the crop)
    input_shape: tuple[int, int, int] | None = None

    @property
    def clean_labels(self) -> np.ndarray:
        return self.train.labels if self.noise_free_labels is None else self.noise_free_labels

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.train.labels, minlength=self.num_classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.input_shape or tuple(self.train.images.shape[1:])


@lru_cache(maxsize=4)
def prepare_data(cfg: DataConfig) -> PreparedData:
    """The data of a config, memoised per process by the (frozen) data config: a study runs many
    seeds on one dataset."""
    lists = ListOptions(cfg.train_list, cfg.test_list, cfg.class_order, cfg.class_names)
    if lists.is_default:
        split = load_dataset(cfg.dataset, cfg.root, cfg.allow_outside_root)
    else:
        split = load_dataset(cfg.dataset, cfg.root, cfg.allow_outside_root, lists)
    files = isinstance(split.train, FileDataset)
    ctx = cfg.context
    if ctx.enabled and files:
        raise DataError(f"data.context (coloured digits) needs a dataset decoded in memory; {cfg.dataset} "
                        "is read from image files")
    num_classes = max(split.train.num_classes, split.test.num_classes)
    if ctx.enabled and ctx.head_classes is not None and ctx.head_classes > num_classes:
        raise DataError(f"data.context.head_classes must be in [0, {num_classes}] (the dataset's class count), "
                        f"got {ctx.head_classes}")
    # colouring makes RGB; image files are decoded as RGB
    _check_normalisation(cfg, 3 if ctx.enabled or files else split.train.images.shape[1])
    lt = cfg.longtail
    # One legacy RandomState for every training-set draw, as the release (exact CMNIST-LT).
    rng = np.random.RandomState(lt.seed)
    train = make_longtail(split.train, lt.profile, lt.rho, lt.n_max, rng, lt.step_fraction)
    clean_labels = train.labels
    clean_counts = np.bincount(clean_labels, minlength=num_classes)
    check_longtail(clean_counts, lt, split.train.class_names)
    test = split.test
    if ctx.enabled:
        head = ctx.head_classes if ctx.head_classes is not None else num_classes // 2
        palette = PALETTES[ctx.palette]
        train = make_coloured_train(train, ctx.noise, head, rng, palette)
        test = make_coloured_test(test, np.random.RandomState(lt.seed), palette)
    groups = class_groups(clean_counts, cfg.groups, cfg.group_bounds)
    noise_free = clean_labels if ctx.enabled else None
    if files:
        input_shape = (3, cfg.crop_size, cfg.crop_size)
    elif cfg.augment == "resized_crop":  # in-memory images through the image-file recipe (LIFT's CIFAR at 224)
        input_shape = (train.images.shape[1], cfg.crop_size, cfg.crop_size)
    else:
        input_shape = None
    return PreparedData(train, test, num_classes, groups, noise_free, split.source, split.caveat, input_shape)


def _check_normalisation(cfg: DataConfig, channels: int) -> None:
    for key in ("mean", "std"):
        values = getattr(cfg, key)
        if values is not None and len(values) != channels:
            raise DataError(f"data.{key} must have one value per channel ({channels} for these images), "
                            f"got {list(values)}")
