"""A finished run folder brought back for ``tailshift evaluate``, ``predict`` and ``export``: its
resolved config (plus any overrides, e.g. another ``data.root``), its trained method from the
checkpoint, and the Many/Med/Few split of its own training set."""
from __future__ import annotations

import copy
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .config import RunConfig, load_config
from .data.build import PreparedData, prepare_data
from .data.lists import FileDataset
from .data.pipeline import normalise
from .data.host_loader import make_feeds
from .data.transforms import EvalViews, to_8bit
from .engine import _load_failure, build_method, mean_over_views, predicted_classes, resolve_device, verify_checkpoint
from .io import RunLock, atomic_open, atomic_write_json
from .models.tuning import merge_lora
from .methods import Method
from .metrics import confusion_matrix, summarize
from .resolve import ResolvedRun, resolve_run

EXPORT_FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


@dataclass
class SavedRun:
    folder: Path
    cfg: RunConfig  # the run's config with the overrides applied
    data: PreparedData  # the data ``cfg`` names (its test split is what ``evaluate`` scores)
    method: Method  # in eval mode, on ``device``
    metrics: dict  # the run's metrics.json
    device: torch.device

    @property
    def head(self) -> str:
        """The head whose accuracy the run reports."""
        return self.metrics["default_head"]

    @property
    def class_names(self) -> list[str]:
        names = self.data.train.class_names
        return list(names) if names is not None else [str(c) for c in range(self.data.num_classes)]

    @property
    def groups(self) -> dict[str, np.ndarray]:
        """Many/Med/Few by the run's own training counts, whatever data it is scored on now."""
        return {name: np.asarray(classes, dtype=np.int64) for name, classes in self.metrics["groups"].items()}

    def mean_std(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        d, channels = self.cfg.data, self.data.image_shape[0]
        if d.mean is None:
            return None, None
        return (torch.tensor(d.mean, device=self.device).view(1, channels, 1, 1),
                torch.tensor(d.std, device=self.device).view(1, channels, 1, 1))


def read_run_checkpoint(folder: Path, stored: ResolvedRun, use: str, damaged_remedy: str, config_remedy: str) -> dict:
    """``folder``'s checkpoint, on the CPU: whole (every CRC checked) and written by ``stored`` (its config.yaml as
    it stands; an edited one is refused, naming the keys). ``use``: what the checkpoint is read to be (never
    "evaluated" from a damaged file); the remedies: what to do about a damaged file and about another config."""
    path = folder / "checkpoint.pt"
    verify_checkpoint(path, f"it is never {use}: {damaged_remedy}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign file: one line saying which
        raise ValueError(f"cannot load checkpoint {path}: {_load_failure(err)}") from None
    if not isinstance(payload, dict) or payload.get("fingerprint") not in stored.accepted_fingerprints():
        trained = payload.get("config") if isinstance(payload, dict) else None
        what = "; ".join(stored.differences(trained)) if isinstance(trained, dict) else "no config recorded"
        raise ValueError(f"{folder / 'config.yaml'} is not the config its checkpoint was trained with (checkpoint -> "
                         f"config.yaml: {what or 'options no longer known'}); {config_remedy}")
    return payload


def load_run(folder: str | Path, overrides: list[str] = (), allow_unfinished: bool = False) -> SavedRun:
    """The run in ``folder``; ``overrides`` (key=value) change its config, e.g. the data to score.

    The folder must be consistent before anything is scored: its checkpoint whole (every CRC checked) and
    trained with config.yaml as it stands (an edited config.yaml is refused, naming the keys), and the run
    finished (its metrics.json is then the same run's), unless ``allow_unfinished``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"run folder {folder} does not exist")
    for name in ("config.yaml", "metrics.json", "checkpoint.pt"):
        if not (folder / name).is_file():
            raise ValueError(f"run folder {folder} has no {name}: only a finished run (trained with "
                             "train.checkpoint=true) can be evaluated, used to predict or exported")
    path = folder / "checkpoint.pt"
    payload = read_run_checkpoint(folder, resolve_run(load_config(folder / "config.yaml")), "evaluated",
                                  "re-train the run (tailshift train ... --fresh) or remove the file",
                                  "restore config.yaml, or pass the change as key=value to score other data")
    cfg = load_config(folder / "config.yaml", overrides)
    run = resolve_run(cfg)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder / 'metrics.json'} is damaged ({err}); re-run the same train command to "
                         "write it again") from None
    data = prepare_data(cfg.data)
    trained = len(metrics["class_counts"])
    if data.num_classes != trained:
        raise ValueError(f"data.dataset={cfg.data.dataset} has {data.num_classes} classes; the run in {folder} "
                         f"was trained on {trained}")
    device = resolve_device(cfg.device)
    method = build_method(run, data)
    try:
        method.load_state_dict(payload["method"])  # the run's class counts come back with it (a buffer)
    except Exception as err:  # a model that is not the run's: one line saying which
        raise ValueError(f"cannot load checkpoint {path} into model.name={cfg.model.name} "
                         f"method.name={cfg.method.name}: {_load_failure(err)}") from None
    metrics = _checked_metrics(folder, payload, metrics, method, allow_unfinished)
    method.to(device).eval()
    return SavedRun(folder, cfg, data, method, metrics, device)


def _checked_metrics(folder: Path, payload: dict, metrics: dict, method: Method, allow_unfinished: bool) -> dict:
    """metrics.json if it is the checkpoint's finished run; for an unfinished run that is allowed, the
    checkpoint's training curve in its place (which heads were trained so far)."""
    stages = method.stages()
    history = payload["history"]
    if payload["stage_index"] < len(stages):
        if not allow_unfinished:
            raise ValueError(f"the run in {folder} did not finish (its checkpoint is at epoch {len(history)} of "
                             f"{sum(stage.epochs for stage in stages)}); finish it with the same train command, "
                             "or pass --allow-unfinished to use it as it is")
        return {**metrics, "curve": history}
    if metrics.get("fingerprint") != payload["fingerprint"] or len(metrics.get("curve", ())) != len(history):
        raise ValueError(f"{folder / 'metrics.json'} is not the finished run's (another config's, or written before "
                         "its checkpoint); re-run the same train command to write it again")
    return metrics


# --- evaluate -------------------------------------------------------------------------------------
def evaluate_run(run: SavedRun) -> dict:
    """Every head's All/Many/Med/Few and per-class accuracy on the test split of ``run.cfg.data``,
    and the reported head's confusion matrix (rows: true class, columns: predicted)."""
    _, test = make_feeds(run.data.train, run.data.test, run.device, run.cfg.data)
    preds, labels = predicted_classes(run.method, test, run.cfg.train.test_batch_size)
    k = run.data.num_classes
    untrained = run.method.untrained_heads(run.metrics["curve"])  # from the run's training curve
    return {
        "run": str(run.folder),
        "data": {"dataset": run.cfg.data.dataset, "root": run.cfg.data.root, "source": run.data.source,
                 "test_images": int(len(labels))},
        "head": run.head,
        "class_names": run.class_names,
        "train_class_counts": run.metrics["class_counts"],
        "groups": {name: classes.tolist() for name, classes in run.groups.items()},
        "heads": {head: {**summarize(p, labels, k, run.groups), "untrained": head in untrained}
                  for head, p in preds.items()},
        "confusion": confusion_matrix(preds[run.head], labels, k).tolist(),
    }


def evaluation_folder(run_folder: Path, overrides: list[str]) -> Path:
    """Where an evaluation is written by default: ``<run>/evaluation/test``, or a folder named after
    the overrides (``data.root=/x`` -> ``data.root_x``) so scores on other data sit side by side."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(overrides)).strip("_")[:80] or "test"
    return run_folder / "evaluation" / name


def write_evaluation(run: SavedRun, result: dict, out: Path) -> tuple[Path, Path]:
    """evaluation.json and confusion.png in ``out``, under the run folder's lock (not while it trains)."""
    from .plots import confusion_plot

    with RunLock(run.folder):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "evaluation.json", result)
        title = f"{run.cfg.method.name} ({run.head} head) on {run.cfg.data.dataset} test"
        png = confusion_plot(np.array(result["confusion"]), run.class_names, out / "confusion.png", title)
    return out / "evaluation.json", png


# --- predict --------------------------------------------------------------------------------------
def read_image(path: str | Path, run: SavedRun) -> np.ndarray:
    """An image file as the run's test pipeline feeds it: uint8 C x H x W, grey or colour as the run's
    data, resized to its images' size (or, under the image-file recipes, resized and centre-cropped, or
    LIFT's five crops, V x C x H x W, under ``data.tte``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {path} not found")
    channels, height, width = run.data.image_shape
    try:
        with Image.open(path) as img:
            img = to_8bit(img, "L" if channels == 1 else "RGB")  # 16-bit and float images scaled, not clipped
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    d = run.cfg.data
    if isinstance(run.data.train, FileDataset) or d.augment == "resized_crop":
        return EvalViews(d.resize_size, d.crop_size, d.tte, d.tte_resize_size)(img)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@torch.inference_mode()
def predict_images(run: SavedRun, paths: list[str], top_k: int = 5) -> list[dict]:
    """The reported head's ``top_k`` classes of each image: [{"image", "top": [(class, name, p)]}]."""
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    raw = torch.from_numpy(np.stack([read_image(p, run) for p in paths])).to(run.device)
    views = raw.shape[1] if raw.ndim == 5 else 1  # test-time ensembling: each image's views averaged, as evaluated
    logits = run.method.predict(normalise(raw.flatten(0, 1) if views > 1 else raw, *run.mean_std()))[run.head]
    logits = mean_over_views(logits, views)
    probs, classes = logits.softmax(dim=1).topk(min(top_k, logits.shape[1]), dim=1)
    names = run.class_names
    return [{"image": str(path), "top": [(int(c), names[c], float(p)) for c, p in zip(cs.tolist(), ps.tolist())]}
            for path, cs, ps in zip(paths, classes, probs)]


# --- export ---------------------------------------------------------------------------------------
#: the views of each image an exported model takes, by ``data.tte`` (FiveCrop: LIFT's five crops)
EXPORTED_VIEWS = {"none": 1, "fivecrop": 5}


def exported_input_shape(run: SavedRun) -> tuple[int, ...]:
    """An exported model's input without the batch: C x H x W, or V x C x H x W under test-time ensembling."""
    views = EXPORTED_VIEWS[run.cfg.data.tte]
    return (views, *run.data.image_shape) if views > 1 else tuple(run.data.image_shape)


class ExportedClassifier(nn.Module):
    """The run's backbone and reported head as one model that needs no tailshift: uint8 pixels
    N x C x H x W in (the run's C, H, W; 0-255), the run's normalisation inside, logits N x K out. Under
    ``data.tte=fivecrop`` it takes N x 5 x C x H x W (each image's five crops, as torchvision's FiveCrop
    orders them) and averages their logits, so that it scores what the run's evaluation scored."""

    def __init__(self, run: SavedRun):
        super().__init__()
        self.method = merge_lora(copy.deepcopy(run.method))  # low-rank updates folded into the weights
        for module in self.method.modules():  # hand-written autograd fast paths (LeNet) cannot be exported;
            if hasattr(module, "use_fast_path"):  # the plain layers compute the same
                module.use_fast_path = False
        self.head, self.views = run.head, EXPORTED_VIEWS[run.cfg.data.tte]
        channels = run.data.image_shape[0]
        mean, std = run.mean_std()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1, channels, 1, 1, device=run.device))
        self.register_buffer("std", std if std is not None else torch.ones(1, channels, 1, 1, device=run.device))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.flatten(0, 1) if self.views > 1 else images).float() / 255.0
        return mean_over_views(self.method.predict((x - self.mean) / self.std)[self.head], self.views)


def export_run(run: SavedRun, fmt: str, output: str | Path | None = None) -> Path:
    """Write the run as a TorchScript (traced) or ONNX model; returns its path (default: in the run folder)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    path = Path(output) if output else run.folder / f"model{EXPORT_FORMATS[fmt]}"
    model = ExportedClassifier(run).eval()
    # the shape the network sees (under data.augment=resized_crop not the stored arrays'); tracing needs no real image
    example = torch.zeros((2, *exported_input_shape(run)), dtype=torch.uint8, device=run.device)
    buffer = io.BytesIO()
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), buffer)
        else:
            _export_onnx(model, example, buffer)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())
    return path


def _export_onnx(model: nn.Module, example: torch.Tensor, buffer: io.BytesIO) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ValueError("export --format onnx needs the onnx package: pip install onnx") from None
    torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
