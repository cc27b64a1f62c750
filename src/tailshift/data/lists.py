"""Datasets read image by image from disk: ImageNet-LT and Places-LT ("relative/path label"
list files, Liu et al. 2019), iNaturalist 2018 (COCO-style JSON annotations) and image folders
(``train/<class>/*``, ``test/<class>/*``: torchvision's ImageFolder layout, images of any size), each
under an image root.

A ``FileDataset`` holds paths and labels only; pixels are decoded by the host
loader's worker processes (``data/host_loader.py``). Every path must stay under the root (no absolute
path, no ``..``; and, unless ``data.allow_outside_root``, no link leading out of it) and
exist; a bad line is a one-line error naming the list file and its line number (for
JSON: the entry of ``annotations``). The classes are those of the training list (its
largest label + 1; a dataset's known class count bounds the labels). They may be
re-indexed by descending training count (``class_order="count"``, as the CSA release
does for ImageNet-LT), ties kept in label order, the same map applied to the test labels.
"""
from __future__ import annotations

import json
import os
import stat
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .arrays import DataError, SplitDataset
from .checks import MAX_CLASSES, special_kind
from .transforms import CONVERSIONS

CLASS_ORDERS = ("list", "count")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class FileDataset:
    """Image files under ``root`` (paths relative to it, utf-8 bytes) and their int64 labels.

    Paths are one numpy byte-string array rather than a list of str, so forked loader
    workers share it without copy-on-access (a Python list's reference counts would
    make every worker copy it page by page).
    """

    root: str
    paths: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.paths.ndim != 1 or self.labels.shape != self.paths.shape:
            raise DataError(f"paths and labels must be (N,) alike, got {self.paths.shape} and {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i].decode())

    def subset(self, index: np.ndarray) -> "FileDataset":
        return FileDataset(self.root, self.paths[index], self.labels[index], self.num_classes, self.class_names)

    def with_labels(self, labels: np.ndarray) -> "FileDataset":
        return FileDataset(self.root, self.paths, labels.astype(np.int64), self.num_classes, self.class_names)


@dataclass(frozen=True)
class ListOptions:
    """Where a list dataset's split files are (None: look for the standard names) and its class order."""

    train_list: str | None = None
    test_list: str | None = None
    class_order: str = "list"
    class_names: str | None = None

    @property
    def is_default(self) -> bool:
        return self == ListOptions()


# ----------------------------------------------------------------------------- parsing

def _check_relative(rel: str, where: str) -> str:
    """``rel`` as a clean relative POSIX path that cannot leave the root."""
    path = PurePosixPath(rel.replace("\\", "/"))
    if not rel or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(f"{where}: path {rel!r} is not inside the image root (absolute or with '..')")
    return path.as_posix()


def _check_label(label: int, num_classes: int | None, where: str) -> int:
    bound = MAX_CLASSES if num_classes is None else num_classes
    if label < 0 or label >= bound:
        allowed = f"0..{bound - 1}" + ("" if num_classes is not None else ", the classes tailshift takes")
        raise DataError(f"{where}: label {label} is out of range ({allowed})")
    return label


def read_list_file(path: str | Path, num_classes: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse "relative/path label" lines: (paths, int64 labels, 1-based line numbers). Blank lines are skipped;
    a path may contain spaces (the label is the last field); a UTF-8 BOM (Windows editors) is dropped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read list file {path}: {e}") from None
    paths, labels, lines = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        where = f"{path}:{number}"
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            raise DataError(f"{where}: expected 'relative/path label', got {line!r}")
        try:
            label = int(fields[1])
        except ValueError:
            raise DataError(f"{where}: label {fields[1]!r} is not an integer") from None
        paths.append(_check_relative(fields[0], where))
        labels.append(_check_label(label, num_classes, where))
        lines.append(number)
    if not paths:
        raise DataError(f"list file {path} holds no 'relative/path label' lines")
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def read_coco_json(path: str | Path, categories: list[int] | None = None
                   ) -> tuple[list[str], np.ndarray, np.ndarray, list[int], tuple[str, ...]]:
    """iNaturalist-style JSON (``images`` with id and file_name, ``annotations`` with image_id and
    category_id, ``categories`` with id and name): (paths, labels, annotation numbers, category ids,
    class names). Labels index the category ids in ascending order; ``categories`` (the training
    file's) fixes that order for a test file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read annotation file {path}: {e}") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations' lists")
    try:
        files = {img["id"]: img["file_name"] for img in doc["images"]}
    except (KeyError, TypeError):
        raise DataError(f"{path}: every entry of 'images' needs 'id' and 'file_name'") from None
    names: dict[int, str] = {}
    for cat in doc.get("categories") or []:
        if isinstance(cat, dict) and "id" in cat:
            names[cat["id"]] = str(cat.get("name", cat["id"]))
    if categories is None:
        used = {a.get("category_id") for a in doc["annotations"] if isinstance(a, dict)}
        categories = sorted(names) if names else sorted(c for c in used if isinstance(c, int))
    label_of = {cat: i for i, cat in enumerate(categories)}
    paths, labels, numbers = [], [], []
    for number, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{number}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise DataError(f"{where}: needs 'image_id' and 'category_id'")
        if ann["image_id"] not in files:
            raise DataError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in label_of:
            raise DataError(f"{where}: category_id {ann['category_id']!r} is out of range "
                            f"(not one of the {len(categories)} training categories)")
        paths.append(_check_relative(str(files[ann["image_id"]]), where))
        labels.append(label_of[ann["category_id"]])
        numbers.append(number)
    if not paths:
        raise DataError(f"annotation file {path} holds no annotations")
    class_names = tuple(names.get(c, str(c)) for c in categories)
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(numbers, dtype=np.int64), categories, class_names


def read_image_folder(root: Path) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray], tuple[str, ...]]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``): ((train paths, labels), (test paths,
    labels), class names). Classes are the train folder's sub-folders in sorted order (hidden ones left out), a
    class's label its place in that order; the test split must have the same class folders."""
    test = "test" if (root / "test").is_dir() else "val"
    if not (root / "train").is_dir() or not (root / test).is_dir():
        raise DataError(f"{root} needs train/ and test/ (or val/) folders with one sub-folder of images per class")
    splits, classes = [], None
    for split in ("train", test):
        names = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is not None and names != classes:
            raise DataError(f"{root / split} class folders {names} differ from {root / 'train'}'s {classes}")
        classes = names
        if not names or len(names) > MAX_CLASSES:
            raise DataError(f"{root / split} holds {len(names)} class folders; 1 to {MAX_CLASSES} are allowed")
        paths, labels = [], []
        for label, name in enumerate(names):
            found = sorted(f"{split}/{name}/{p.name}" for p in (root / split / name).iterdir()
                           if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise DataError(f"class folder {root / split / name} holds no {'/'.join(IMAGE_EXTENSIONS)} image")
            paths += found
            labels += [label] * len(found)
        splits.append((paths, np.asarray(labels, dtype=np.int64)))
    return splits[0], splits[1], tuple(classes)


def read_class_names(path: str | Path, paths: list[str], labels: np.ndarray, num_classes: int) -> tuple[str, ...]:
    """Each class's name from a "folder name" file, matched by the folder its training images are in: ImageNet's
    LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca": the first name), Places365's categories_places365.txt
    ("/a/apartment_building/outdoor 8": the folder, apartment_building-outdoor, as Places-LT names it and LIFT
    prompts it, shijxcs/LIFT datasets/Places_LT/classnames.txt), or LIFT's own classnames.txt files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class-name file {path}: {e}") from None
    by_folder = {}
    for line in text.splitlines():
        key, _, rest = line.strip().partition(" ")
        if not key:
            continue
        if key.startswith("/"):  # Places365: /<letter>/<name>[/<sub>]
            key = "-".join(key.split("/")[2:])
        rest = rest.strip()
        by_folder[key] = key if not rest or rest.isdigit() else rest.split(",")[0].strip()
    folder_of = {}
    for rel, label in zip(paths, labels):
        folder_of.setdefault(int(label), PurePosixPath(rel).parent.name)
    names = []
    for label in range(num_classes):
        folder = folder_of.get(label)
        if folder not in by_folder:
            raise DataError(f"class-name file {path} has no line for class {label} (training folder {folder!r})")
        names.append(by_folder[folder])
    return tuple(names)


def _image_problem(full: str, rel: str, wide: Counter) -> str | None:
    """Why the file cannot be an image, from its header (the pixels are decoded in training): not an
    image format Pillow knows, or more pixels than Pillow's decompression-bomb limit. A mode that
    training scales to 8 bits (``transforms.WIDE_MODES``) is counted in ``wide``."""
    try:
        with Image.open(full) as img:
            if img.mode in CONVERSIONS:
                wide[img.mode] += 1
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        return f"image {rel!r} is refused: {e}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"image {rel!r} is not a readable image ({e})"
    return None


def check_files(root: Path, paths: list[str], numbers: np.ndarray, source: Path, entry: str = "line",
                allow_outside_root: bool = False) -> Counter:
    """Every image exists, is a regular file with an image header within Pillow's pixel limit and,
    unless allowed, resolves inside ``root`` (a linked folder or file may lead out of it): else a
    one-line error naming ``source`` and the entry's number. Returns how many images have each mode
    that training scales to 8 bits.
    One ``lstat`` per image (plus a resolution per folder, and per linked file) on a few
    threads: they release the GIL, and on network file systems their latency is what costs."""
    real_root = os.path.realpath(root)
    folders: dict[str, str] = {}

    def outside(real: str) -> bool:
        return not (real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep))

    def problem(i: int, wide: Counter) -> str | None:
        full = os.path.join(root, paths[i])
        try:
            linked = stat.S_ISLNK(os.lstat(full).st_mode)
        except OSError:
            return f"image {paths[i]!r} not found under {root}"
        if not os.path.isfile(full):
            kind = special_kind(os.stat(full).st_mode) if os.path.exists(full) else None
            return f"{paths[i]!r} under {root} is {'a ' + kind if kind else 'not a file'}, not an image"
        if not allow_outside_root:
            folder = os.path.dirname(paths[i])
            if folder not in folders:
                folders[folder] = os.path.realpath(os.path.join(root, folder))
            real = os.path.realpath(full) if linked else os.path.join(folders[folder], os.path.basename(full))
            if outside(real):
                return (f"image {paths[i]!r} resolves to {real}, outside the data root {root}; "
                        "set data.allow_outside_root=true to read it anyway")
        return _image_problem(full, paths[i], wide)

    def first_problem(chunk: range) -> tuple[tuple[int, str] | None, Counter]:
        wide: Counter = Counter()
        for i in chunk:
            found = problem(i, wide)
            if found:
                return (i, found), wide
        return None, wide

    size = 4096
    chunks = [range(s, min(s + size, len(paths))) for s in range(0, len(paths), size)]
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(8, len(chunks))) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # set here, once: the filters are global
        wide: Counter = Counter()
        for bad, chunk_wide in pool.map(first_problem, chunks):
            if bad is not None:
                i, what = bad
                where = {"line": f"{source}:{numbers[i]}", "annotation": f"{source}: annotations[{numbers[i]}]",
                         "file": str(source)}[entry]
                raise DataError(f"{where}: {what}")
            wide += chunk_wide
    return wide


def count_order(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """new label of each old label, classes sorted by descending training count (ties: label order)."""
    counts = np.bincount(train_labels, minlength=num_classes)
    order = np.argsort(-counts, kind="stable")
    new_of_old = np.empty(num_classes, dtype=np.int64)
    new_of_old[order] = np.arange(num_classes)
    return new_of_old


# ----------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class ListLayout:
    """A list dataset: the bound of its labels (None: any), standard file names, format."""

    num_classes: int | None
    train_file: str | None
    test_file: str | None
    kind: str = "txt"  # txt: "path label" lines; json: COCO-style annotations; folder: train/<class>/ folders
    names_file: str | None = None  # the classes' names (``read_class_names``), looked for as the lists are


LAYOUTS = {
    "imagenet-lt": ListLayout(1000, "ImageNet_LT_train.txt", "ImageNet_LT_test.txt", names_file="LOC_synset_mapping.txt"),
    "places-lt": ListLayout(365, "Places_LT_train.txt", "Places_LT_test.txt", names_file="categories_places365.txt"),
    "inat2018": ListLayout(None, "train2018.json", "val2018.json", "json"),
    "filelist": ListLayout(None, None, None),
    "imagefolder": ListLayout(None, None, None, "folder"),
}


def _places(standard: str, root: Path, search: list[Path]) -> list[Path]:
    """Where a standard file is looked for: the image root, then each data folder's lists/ and itself."""
    return [root / standard] + [d / sub / standard for d in search for sub in ("lists", ".")]


def _names_file(name: str, given: str | None, standard: str | None, root: Path, search: list[Path]) -> Path | None:
    """The class-name file: ``data.class_names`` or the dataset's standard one where found (None: no names)."""
    if given is not None:
        if not Path(given).is_file():
            raise DataError(f"{name}: data.class_names {given} is not a file")
        return Path(given)
    return next((p for p in _places(standard, root, search) if p.is_file()), None) if standard else None


def _find(name: str, key: str, given: str | None, standard: str | None, root: Path, search: list[Path]) -> Path:
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise DataError(f"{name}: data.{key} {given} is not a file")
        return path
    if standard is None:
        raise DataError(f"dataset {name!r} needs data.{key}=PATH (a 'relative/path label' list)")
    looked = _places(standard, root, search)
    for candidate in looked:
        if candidate.is_file():
            return candidate
    places = ", ".join(str(p.parent) for p in looked)
    raise DataError(f"{name}: no {standard} (looked in {places}); pass data.{key}=PATH")


def load_list_dataset(name: str, layout: ListLayout, root: str | None, options: ListOptions,
                      search: list[Path], allow_outside_root: bool = False) -> SplitDataset:
    """Read a list dataset's train and test splits under the image ``root``."""
    if root is None:
        what = "a folder with train/ and test/ class folders" if layout.kind == "folder" else \
            "the folder the list paths are relative to"
        raise DataError(f"dataset {name!r} needs data.root=PATH, {what}")
    if options.class_order not in CLASS_ORDERS:
        raise DataError(f"data.class_order must be one of {', '.join(CLASS_ORDERS)}; got {options.class_order!r}")
    image_root = Path(root)
    if not image_root.is_dir():
        raise DataError(f"{name}: data.root {root} is not a folder")
    if layout.kind == "folder":
        for key in ("train_list", "test_list"):
            if getattr(options, key) is not None:
                raise DataError(f"dataset {name!r} reads data.root's class folders; data.{key} is for "
                                "data.dataset=filelist")
        (train_paths, train_labels), (test_paths, test_labels), names = read_image_folder(image_root)
        train_numbers, test_numbers = np.arange(len(train_paths)), np.arange(len(test_paths))
        train_file = test_file = image_root
        num_classes, entry = len(names), "file"
        if options.class_names is not None:  # better prompts than the folder names, matched by folder
            names = read_class_names(options.class_names, train_paths, train_labels, num_classes)
    else:
        train_file = _find(name, "train_list", options.train_list, layout.train_file, image_root, search)
        test_file = _find(name, "test_list", options.test_list, layout.test_file, image_root, search)
        if layout.kind == "json":
            if options.class_names is not None:
                raise DataError(f"{name}: the class names come from the annotation files' categories; data.class_names "
                                "applies to 'path label' lists")
            train_paths, train_labels, train_numbers, categories, names = read_coco_json(train_file)
            test_paths, test_labels, test_numbers, _, _ = read_coco_json(test_file, categories)
            num_classes, entry = len(categories), "annotation"
        else:
            train_paths, train_labels, train_numbers = read_list_file(train_file, layout.num_classes)
            num_classes = int(train_labels.max()) + 1
            test_paths, test_labels, test_numbers = read_list_file(test_file, num_classes)
            names_file = _names_file(name, options.class_names, layout.names_file, image_root, search)
            names = None if names_file is None else read_class_names(names_file, train_paths, train_labels, num_classes)
            entry = "line"
    wide = (check_files(image_root, train_paths, train_numbers, train_file, entry, allow_outside_root)
            + check_files(image_root, test_paths, test_numbers, test_file, entry, allow_outside_root))
    if options.class_order == "count":
        new_of_old = count_order(train_labels, num_classes)
        train_labels, test_labels = new_of_old[train_labels], new_of_old[test_labels]
        if names is not None:
            old_of_new = np.argsort(new_of_old)
            names = tuple(names[i] for i in old_of_new)

    def split(paths: list[str], labels: np.ndarray) -> FileDataset:
        return FileDataset(str(image_root), np.array([p.encode() for p in paths], dtype=np.bytes_), labels,
                           num_classes, names)

    source = f"{image_root} (class folders)" if layout.kind == "folder" else f"{image_root} (lists {train_file}, {test_file})"
    return SplitDataset(split(train_paths, train_labels), split(test_paths, test_labels), source=source,
                        caveat="; ".join(f"{wide[mode]} images of mode {CONVERSIONS[mode]}" for mode in sorted(wide)))


class ListLoader:
    """A registry entry for a list dataset: called with the image root, whether paths may lead
    outside it, and the ``ListOptions``."""

    reads_lists = True

    def __init__(self, name: str, layout: ListLayout, search: Callable[[], list[Path]]):
        self.name, self.layout, self.search = name, layout, search

    def __call__(self, root: str | None, allow_outside_root: bool = False,
                 options: ListOptions | None = None) -> SplitDataset:
        return load_list_dataset(self.name, self.layout, root, options or ListOptions(), self.search(),
                                 allow_outside_root)
