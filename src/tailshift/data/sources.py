"""Readers for the standard dataset files, so every dataset arrives as the same SplitDataset.

Nothing here touches the network except `download`, which only runs when a user asks for it.
"""
from __future__ import annotations

import builtins
import codecs
import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

from tailshift.data.arrays import ArrayDataset, DataError, SplitDataset, to_nchw
from tailshift.data.checks import check_split, special_kind
from tailshift.data.lists import IMAGE_EXTENSIONS, LAYOUTS, ListLoader, ListOptions
from tailshift.data.transforms import CONVERSIONS, to_8bit
from tailshift.registry import Registry

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
#: CIFAR-100's fine label names in label order, as its meta file lists them (used when the meta file is absent)
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
KNOWN_SHA256 = {
    "cifar10-jpeg.npz": "b07ae050623c0a8632271f8e08ad3bb0060058fdcacc5acfcab8445d32e85be2",
}
#: Files known to differ from the official data, by file name: the caveat every result on them carries.
KNOWN_CAVEATS = {
    "cifar10-jpeg.npz": "a JPEG-decoded copy of CIFAR-10, not the official pixels: accuracy is indicative only",
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def inside_root(path: Path, root: Path, allow_outside_root: bool) -> Path:
    """``path``, unless it resolves (through a link) outside ``root`` and the user has not allowed that."""
    if not allow_outside_root and not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{path} resolves to {path.resolve()}, outside the data root {root}; "
                        "set data.allow_outside_root=true to read it anyway")
    return path


# ----------------------------------------------------------------------------- idx (MNIST)

_IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST-format idx file (raw or .gz), checking the header against the payload."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: bad magic {raw[:4].hex() or '(empty)'}, not an idx file")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        kind = _IDX_TYPES.get(dtype_code, "unknown")
        raise DataError(f"{path}: unsupported idx type 0x{dtype_code:02X} ({kind}); only 0x08 (uint8)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(raw)} bytes, header {dims} needs {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _idx_file(root: Path, split: str, kind: str, ndim: int) -> Path:
    names = [f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"no {names[0]}[.gz] (or {names[1]}[.gz]) in {root}")


def _has_mnist_files(root: Path) -> bool:
    try:
        _idx_file(root, "train", "images", 3)
        return True
    except DataError:
        return False


def load_mnist_format(root: str | Path, class_names: tuple[str, ...] | None = None,
                      allow_outside_root: bool = False) -> SplitDataset:
    """Load the four MNIST-format idx files (MNIST, Fashion-MNIST, ...) from one folder."""
    root = Path(root)
    splits = []
    for split in ("train", "t10k"):
        images_file = inside_root(_idx_file(root, split, "images", 3), root, allow_outside_root)
        labels_file = inside_root(_idx_file(root, split, "labels", 1), root, allow_outside_root)
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{images_file} {images.shape} and {labels_file} {labels.shape} do not match"
            )
        splits.append(ArrayDataset(to_nchw(images), labels.astype(np.int64), class_names))
    return SplitDataset(*splits, source=str(root))


# ----------------------------------------------------------------------------- CIFAR pickles

_PICKLE_ALLOWED = {
    **{("builtins", n): getattr(builtins, n) for n in (
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
        "bool", "str", "bytes", "bytearray",
    )},
    # Python 3 writes bytes as _codecs.encode(str, "latin1") at protocols < 3.
    ("_codecs", "encode"): codecs.encode,
    **{(m, n): getattr(_multiarray, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for n in ("_reconstruct", "scalar")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_PICKLE_ALLOWED.update({("__builtin__", n): obj for (m, n), obj in list(_PICKLE_ALLOWED.items())
                        if m == "builtins"})


class _RestrictedUnpickler(pickle.Unpickler):
    """Admit only numpy arrays and builtin values: a pickle can otherwise run any code."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.path}: "
                "only numpy arrays and builtin types are allowed"
            ) from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # corrupt pickles raise many types (UnpicklingError, EOFError, ...)
        raise DataError(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if b"data" not in batch or label_key not in batch:
        found = ", ".join(repr(k) for k in batch)
        raise DataError(f"{path}: needs keys b'data' and {label_key!r}, found {found}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: data must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_layout(num_classes: int) -> tuple[str, list[str], str, bytes, str, bytes]:
    """(folder, train files, test file, label key, meta file, names key) for CIFAR-10/100."""
    if num_classes == 10:
        train = [f"data_batch_{i}" for i in range(1, 6)]
        return "cifar-10-batches-py", train, "test_batch", b"labels", "batches.meta", b"label_names"
    if num_classes == 100:
        return "cifar-100-python", ["train"], "test", b"fine_labels", "meta", b"fine_label_names"
    raise DataError(f"CIFAR has 10 or 100 classes, not {num_classes}")


def _cifar_dir(root: Path, num_classes: int) -> Path | None:
    folder, _, test, *_ = _cifar_layout(num_classes)
    for candidate in (root, root / folder):
        if (candidate / test).is_file():
            return candidate
    return None


def load_cifar(root: str | Path, num_classes: int, allow_outside_root: bool = False) -> SplitDataset:
    """Load CIFAR-10/100 from the python pickles; `root` is the extracted folder or its parent."""
    root = Path(root)
    folder, train_files, test_file, label_key, meta_file, names_key = _cifar_layout(num_classes)
    found = _cifar_dir(root, num_classes)
    if found is None:
        raise DataError(f"no CIFAR-{num_classes} {test_file!r} in {root} or {root / folder}")
    missing = [n for n in train_files if not (found / n).is_file()]
    if missing:
        raise DataError(f"CIFAR-{num_classes} folder {found} lacks {', '.join(missing)}")
    for name in (*train_files, test_file, meta_file):
        inside_root(found / name, root, allow_outside_root)
    names = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES
    if (found / meta_file).is_file():
        meta = _unpickle(found / meta_file)
        if names_key in meta:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
    train = [_cifar_batch(found / n, label_key) for n in train_files]
    test_images, test_labels = _cifar_batch(found / test_file, label_key)
    return SplitDataset(
        ArrayDataset(np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]), names),
        ArrayDataset(test_images, test_labels, names),
        source=str(found),
    )


# ----------------------------------------------------------------------------- npz

def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise DataError unless the file's sha256 is `expected` (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise DataError(f"{path}: sha256 {digest.hexdigest()} does not match expected {expected}")


def load_npz(path: str | Path, verify: bool = False,
             class_names: tuple[str, ...] | None = None) -> SplitDataset:
    """Load x_train, y_train, x_test, y_test (x uint8 NHWC or NCHW) from an .npz file.

    `verify` checks the sha256 in KNOWN_SHA256 first (slow for large files, so off by default).
    An optional `class_names` array in the file is used when `class_names` is not given.
    """
    path = Path(path)
    if verify:
        if path.name not in KNOWN_SHA256:
            raise DataError(f"no known sha256 for {path.name}; known: {', '.join(KNOWN_SHA256)}")
        verify_sha256(path, KNOWN_SHA256[path.name])
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} (has {', '.join(f.files)})")
            arrays = {k: f[k] for k in keys}
            if class_names is None and "class_names" in f.files:
                class_names = tuple(str(n) for n in f["class_names"])
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    splits = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} must hold integers, got {y.dtype}")
        try:
            splits.append(ArrayDataset(to_nchw(x), y.astype(np.int64), class_names))
        except DataError as e:
            raise DataError(f"{path}: {split} split: {e}") from None
    return SplitDataset(*splits, source=str(path), caveat=KNOWN_CAVEATS.get(path.name, ""))


# ----------------------------------------------------------------------------- image folders

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _list_images(split_dir: Path, root: Path, allow_outside_root: bool) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = []
    for label, name in enumerate(classes):
        class_dir = inside_root(split_dir / name, root, allow_outside_root)
        found = [inside_root(p, root, allow_outside_root) for p in sorted(class_dir.iterdir())
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not found:
            raise DataError(f"class folder {class_dir} holds no {'/'.join(IMAGE_EXTENSIONS)} image (0 files)")
        files += [(p, label) for p in found]
    return classes, files


def load_image_folder(root: str | Path, image_size: int | None = None,
                      allow_outside_root: bool = False) -> SplitDataset:
    """Load root/train/<class>/* and root/test/<class>/* (or val/) with Pillow.

    Grayscale sets stay one channel; without `image_size` all images must share one size.
    Files and class folders that resolve outside `root` (links) are refused unless allowed.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    train_dir = root / "train"
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise DataError(f"{root} needs train/ and test/ (or val/) folders with one subfolder per class")
    classes, train_files = _list_images(train_dir, root, allow_outside_root)
    test_classes, test_files = _list_images(test_dir, root, allow_outside_root)
    if test_classes != classes:
        raise DataError(
            f"{test_dir} classes {test_classes} differ from {train_dir} classes {classes}"
        )
    if not train_files or not test_files:
        raise DataError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {train_dir} or {test_dir}")

    def header(path: Path) -> tuple[str, tuple[int, int]]:
        try:
            with Image.open(path) as img:
                return img.mode, img.size
        except (UnidentifiedImageError, OSError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, not a warning
        headers = [header(p) for p, _ in train_files + test_files]
    mode = "L" if all(m in _GRAY_MODES for m, _ in headers) else "RGB"
    wide = sorted({m for m, _ in headers if m in CONVERSIONS})
    caveat = "; ".join(f"{sum(m == w for m, _ in headers)} images of mode {CONVERSIONS[w]}" for w in wide)
    if image_size is None:
        sized = [(path, size) for (path, _), (_, size) in zip(train_files + test_files, headers)]
        (first, (w0, h0)), odd = sized[0], [(path, size) for path, size in sized if size != sized[0][1]]
        if odd:
            path, (w, h) = odd[0]
            raise DataError(f"{path} is {w}x{h} but {first} is {w0}x{h0} ({len(odd)} of {len(sized)} images "
                            "differ in size); resize them to one size (or load with image_size)")

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                img = to_8bit(img, mode)
                if image_size is not None:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                return np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:  # a truncated file fails only here
            raise DataError(f"cannot decode image {path}: {e}") from None

    def load(files: list[tuple[Path, int]]) -> ArrayDataset:
        images = [decode(path) for path, _ in files]
        labels = np.array([label for _, label in files], dtype=np.int64)
        return ArrayDataset(to_nchw(np.stack(images)), labels, tuple(classes))

    return SplitDataset(load(train_files), load(test_files), source=str(root), caveat=caveat)


# ----------------------------------------------------------------------------- defaults and registry

def default_data_dirs() -> list[Path]:
    """Where datasets are looked for: $TAILSHIFT_DATA, the shared data folder beside the repo, ./data."""
    dirs = [Path(os.environ["TAILSHIFT_DATA"])] if os.environ.get("TAILSHIFT_DATA") else []
    repo_root = Path(__file__).resolve().parents[3]
    return dirs + [repo_root.parent / "shared" / "data", Path.cwd() / "data"]


#: name -> loader(root, allow_outside_root): root None looks in the default locations
DATASETS: Registry[Callable[[str | None, bool], SplitDataset]] = Registry("dataset")


def load_dataset(name: str, root: str | None = None, allow_outside_root: bool = False,
                 lists: ListOptions | None = None) -> SplitDataset:
    """Load a registered dataset by name from `root` or the default locations, and refuse
    data that cannot be what it claims (``checks.check_split``). ``lists`` (split files,
    class order) applies to the list datasets only."""
    loader = DATASETS.get(name)
    kind = special_kind(os.stat(root).st_mode) if root is not None and os.path.exists(root) else None
    if kind:  # reading a named pipe would wait for a writer forever
        raise DataError(f"data.root {root} is a {kind}, not a file or folder")
    if getattr(loader, "reads_lists", False):
        split = loader(root, allow_outside_root, lists)
    elif lists is not None and not lists.is_default:
        raise DataError(f"data.train_list, data.test_list, data.class_order and data.class_names apply to the list datasets "
                        f"({', '.join(LAYOUTS)}), not to {name!r}")
    else:
        split = loader(root, allow_outside_root)
    check_split(split)
    return split


def _not_found(name: str, looked: list[Path], how: str) -> DataError:
    places = ", ".join(str(p) for p in looked)
    return DataError(f"{name} not found (looked in {places}); {how}")


def _get_hint(name: str) -> str:
    return f"pass data.root=PATH, or `tailshift download {name} --root DIR` when online"


def _mnist_loader(name: str, system_dirs: list[Path], class_names: tuple[str, ...], hint: str):
    def loader(root: str | None, allow_outside_root: bool = False) -> SplitDataset:
        if root is not None:
            root = Path(root)  # the folder itself, or its parent as `download` leaves it
            if not _has_mnist_files(root) and _has_mnist_files(root / name):
                root = root / name
            return load_mnist_format(root, class_names, allow_outside_root)
        looked = system_dirs + [d / name for d in default_data_dirs()]
        for candidate in looked:
            if _has_mnist_files(candidate):
                return load_mnist_format(candidate, class_names, allow_outside_root)
        raise _not_found(name, looked, hint)

    return loader


DATASETS.register("fashion-mnist")(_mnist_loader(
    "fashion-mnist", [FASHION_MNIST_SYSTEM_DIR], FASHION_MNIST_CLASSES,
    "apt-get install -y dataset-fashion-mnist, or " + _get_hint("fashion-mnist"),
))
DATASETS.register("mnist")(_mnist_loader("mnist", [], MNIST_CLASSES, _get_hint("mnist")))


@DATASETS.register("cifar10")
def _load_cifar10(root: str | None, allow_outside_root: bool = False) -> SplitDataset:
    if root is not None:
        if str(root).endswith(".npz"):
            return load_npz(root, class_names=CIFAR10_CLASSES)
        return load_cifar(root, 10, allow_outside_root)
    dirs = default_data_dirs()
    for d in dirs:
        if _cifar_dir(d, 10) is not None:
            return load_cifar(d, 10, allow_outside_root)
    for d in dirs:
        if (d / "cifar10-jpeg.npz").is_file():
            warnings.warn(
                f"CIFAR-10 pickles not found; using {d / 'cifar10-jpeg.npz'}, a JPEG-decoded copy: "
                "accuracy on it is indicative only", stacklevel=2,
            )
            return load_npz(d / "cifar10-jpeg.npz", class_names=CIFAR10_CLASSES)
    looked = [d / "cifar-10-batches-py" for d in dirs] + [d / "cifar10-jpeg.npz" for d in dirs]
    raise _not_found("cifar10", looked, _get_hint("cifar10"))


@DATASETS.register("cifar10-npz")
def _load_cifar10_npz(root: str | None, allow_outside_root: bool = False) -> SplitDataset:
    if root is not None:
        return load_npz(root, class_names=CIFAR10_CLASSES)
    looked = [d / "cifar10-jpeg.npz" for d in default_data_dirs()]
    for path in looked:
        if path.is_file():
            return load_npz(path, class_names=CIFAR10_CLASSES)
    raise _not_found("cifar10-npz", looked, "pass data.root=PATH/TO/FILE.npz")


@DATASETS.register("cifar100")
def _load_cifar100(root: str | None, allow_outside_root: bool = False) -> SplitDataset:
    if root is not None:
        return load_cifar(root, 100, allow_outside_root)
    looked = [d / "cifar-100-python" for d in default_data_dirs()]
    for d in looked:
        if _cifar_dir(d, 100) is not None:
            return load_cifar(d, 100, allow_outside_root)
    raise _not_found("cifar100", looked, _get_hint("cifar100"))


@DATASETS.register("npz")
def _load_any_npz(root: str | None, allow_outside_root: bool = False) -> SplitDataset:
    if root is None:
        raise DataError("dataset 'npz' needs data.root=PATH to an .npz file")
    return load_npz(root)


@DATASETS.register("folder")
def _load_folder(root: str | None, allow_outside_root: bool = False) -> SplitDataset:
    if root is None:
        raise DataError("dataset 'folder' needs data.root=PATH to a folder with train/ and test/")
    return load_image_folder(root, allow_outside_root=allow_outside_root)


for _name, _layout in LAYOUTS.items():
    DATASETS.register(_name)(ListLoader(_name, _layout, default_data_dirs))


# ----------------------------------------------------------------------------- download

#: Where `download` fetches each dataset, https first. The Fashion-MNIST authors' S3 site
#: offers only http; every file is checked against DOWNLOAD_SHA256 whichever mirror served it.
MIRRORS = {
    "fashion-mnist": ["https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
    "cifar100": ["https://www.cs.toronto.edu/~kriz/"],
}
#: sha256 of every file `download` fetches: the official archives' digests (Fashion-MNIST's
#: match the MD5 sums its authors publish, MNIST's and CIFAR's are those torchvision, Keras
#: and TFDS pin). A file with any other digest is refused.
DOWNLOAD_SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "cifar10": {"cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
    "cifar100": {"cifar-100-python.tar.gz": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"},
}


def fetch_url(url: str, dest: Path) -> None:
    """Copy ``url`` to ``dest``: the only code that touches the network (tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def _fetch_verified(name: str, file: str, dest: Path) -> None:
    """``file`` from the first mirror that serves it with the pinned sha256."""
    errors = []
    for base in MIRRORS[name]:
        try:
            fetch_url(base + file, dest)
            verify_sha256(dest, DOWNLOAD_SHA256[name][file])
            return
        except (OSError, DataError) as e:
            errors.append(f"{base + file}: {e}")
    raise DataError(f"could not download {file}: {'; '.join(errors)}")


_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def _download_folder(name: str, root: Path) -> Path:
    return root / name if name in ("fashion-mnist", "mnist") else root / _cifar_layout(_CIFAR_CLASSES[name])[0]


def _missing_files(name: str, folder: Path) -> list[str]:
    """What a complete download folder lacks (idx files must also have their pinned digest)."""
    if name in _CIFAR_CLASSES:
        _, train, test, _, meta, _ = _cifar_layout(_CIFAR_CLASSES[name])
        return [f for f in (*train, test, meta) if not (folder / f).is_file()]
    missing = []
    for file, digest in DOWNLOAD_SHA256[name].items():
        try:
            verify_sha256(folder / file, digest)
        except (OSError, DataError):
            missing.append(file)
    return missing



def download(name: str, root: str | Path) -> Path:
    """Fetch the official files (online use only) and return the path to pass as data.root.

    Everything is fetched and checked in a temp folder under ``root`` and moved into place
    only when complete, so a failed download leaves nothing behind.
    """
    if name not in MIRRORS:
        raise DataError(f"cannot download {name!r}; downloadable: {', '.join(MIRRORS)}")
    root = Path(root)
    final = _download_folder(name, root)
    if final.exists():
        missing = _missing_files(name, final)
        if not missing:
            return final
        raise DataError(f"{final} exists but lacks or has altered {', '.join(missing)}; "
                        "delete the folder and download again")
    created = [d for d in (root, *root.parents) if not d.exists()]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".download-{name}-"))
    complete = staging / final.name  # made with the usual permissions (mkdtemp's are private)
    try:
        if name in _CIFAR_CLASSES:
            (archive,) = DOWNLOAD_SHA256[name]
            _fetch_verified(name, archive, staging / archive)
            with tarfile.open(staging / archive) as tar:
                tar.extractall(staging, filter="data")
        else:
            complete.mkdir()
            for file in DOWNLOAD_SHA256[name]:
                _fetch_verified(name, file, complete / file)
        missing = _missing_files(name, complete)
        if missing:
            raise DataError(f"the {name} download lacks {', '.join(missing)}")
        os.replace(complete, final)
    except BaseException:
        for folder in (staging, *created):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)  # what is left of it: a CIFAR archive
    return final
