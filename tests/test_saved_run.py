"""evaluate / predict / export on a finished run folder (a 1-epoch CSA run on a tiny .npz set)."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_prepared
from PIL import Image

from tailshift import cli
from tailshift.config import build_config
from tailshift.data.pipeline import normalise
from tailshift.data.transforms import five_crops
from tailshift.engine import train
from tailshift.saved_run import export_run, load_run, predict_images

NAMES = [f"kind{c}" for c in range(10)]


def write_npz(path, seed=0, counts=(60, 40, 25, 15, 10, 8, 6, 5, 4, 3)):
    data = tiny_prepared(channels=3, counts=counts, seed=seed)
    np.savez(path, x_train=data.train.images, y_train=data.train.labels, x_test=data.test.images,
             y_test=data.test.labels, class_names=np.array(NAMES))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    write_npz(root / "data.npz")
    cfg = build_config({"output": str(root / "run"), "device": "cpu", "progress": False},
                       ["data.dataset=npz", f"data.root={root / 'data.npz'}", "data.longtail.profile=none",
                        "data.mean=[0.2, 0.2, 0.2]", "data.std=[0.3, 0.3, 0.3]", "train.epochs=2",
                        "train.batch_size=32", "train.optim.lr=0.02", "method.name=csa",
                        "method.params={warmup_epochs: 1, delta: 0.0}"])
    train(cfg)
    return root / "run"


def test_evaluate_rescores_the_run_and_writes_json_and_confusion_png(run_folder, capsys):
    assert cli.main(["evaluate", str(run_folder)]) == 0
    out = capsys.readouterr().out
    assert "csa on npz test (200 images)" in out and "balanced *" in out and "kind9" in out
    result = json.loads((run_folder / "evaluation" / "test" / "evaluation.json").read_text())
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert result["heads"] == metrics["heads"]  # the same checkpoint on the same test set
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 200 and np.trace(confusion) / 2 == pytest.approx(metrics["result"]["all"])
    assert (run_folder / "evaluation" / "test" / "confusion.png").stat().st_size > 1000


def test_evaluate_on_other_data_keeps_the_runs_groups(run_folder, tmp_path, capsys):
    write_npz(tmp_path / "other.npz", seed=5, counts=(3, 4, 5, 6, 8, 10, 15, 25, 40, 60))
    override = f"data.root={tmp_path / 'other.npz'}"
    assert cli.main(["evaluate", str(run_folder), override, "--output", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert result["groups"] == metrics["groups"] and result["train_class_counts"] == metrics["class_counts"]
    assert result["data"]["root"] == str(tmp_path / "other.npz")


def test_predict_gives_top_k_of_the_reported_head(run_folder, tmp_path, capsys):
    run = load_run(run_folder)
    images = run.data.test.images[[0, 150]]
    paths = []
    for i, pixels in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(pixels.transpose(1, 2, 0)).save(paths[-1])
    Image.fromarray(images[0, 0]).resize((40, 50)).save(tmp_path / "grey.png")  # converted and resized
    assert len(predict_images(run, [str(tmp_path / "grey.png")])[0]["top"]) == 5
    top = predict_images(run, paths, top_k=3)
    with torch.no_grad():
        logits = run.method.predict(normalise(torch.from_numpy(images), *run.mean_std()))["balanced"]
    probs = logits.softmax(1)
    for item, p in zip(top, probs):
        assert [c for c, _, _ in item["top"]] == p.topk(3).indices.tolist()
        assert [q for _, _, q in item["top"]] == pytest.approx(p.topk(3).values.tolist(), abs=1e-6)
        assert item["top"][0][1] == NAMES[item["top"][0][0]]
    assert cli.main(["predict", str(run_folder), *paths, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{paths[0]} (balanced head): kind") and lines[0].count("kind") == 2


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_gives_the_runs_logits_without_tailshift(run_folder, tmp_path, fmt):
    run = load_run(run_folder)
    batch = torch.from_numpy(run.data.test.images[::20])  # uint8, the run's own test images
    with torch.no_grad():
        expected = run.method.predict(normalise(batch, *run.mean_std()))["balanced"]
    if fmt == "torchscript":
        path = export_run(run, fmt, tmp_path / "model.pt")
        got = torch.jit.load(str(path))(batch)
    else:
        pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        path = export_run(run, fmt, tmp_path / "model.onnx")
        got = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"images": batch.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_under_resized_crop_and_five_crops_scores_what_the_run_scored(tmp_path, fmt, capsys):
    """The network sees 16 x 16 crops of the 28 x 28 arrays (LeNet's classifier fixes that size) and each test
    image's five crops, logits averaged: the exported model, fed those crops, matches the run's accuracy."""
    write_npz(tmp_path / "data.npz")
    cfg = build_config({"output": str(tmp_path / "run"), "device": "cpu", "progress": False},
                       ["data.dataset=npz", f"data.root={tmp_path / 'data.npz'}", "data.longtail.profile=none",
                        "train.epochs=1", "train.batch_size=32", "data.augment=resized_crop", "data.resize_size=20",
                        "data.crop_size=16", "data.tte=fivecrop", "data.tte_resize_size=20"])
    metrics = train(cfg)
    run = load_run(tmp_path / "run")
    crops = torch.from_numpy(np.stack([five_crops(Image.fromarray(image.transpose(1, 2, 0)), 20, 16)
                                       for image in run.data.test.images]))
    assert crops.shape == (200, 5, 3, 16, 16)
    if fmt == "torchscript":
        assert cli.main(["export", str(tmp_path / "run"), "--format", fmt]) == 0
        assert "uint8 images N x 5 x 3 x 16 x 16 (each image's 5 views, as data.tte=fivecrop makes them; " \
               "logits averaged)" in capsys.readouterr().out
        logits = torch.jit.load(str(tmp_path / "run" / "model.pt"))(crops)
    else:
        pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        path = export_run(run, fmt, tmp_path / "model.onnx")
        logits = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"images": crops.numpy()})[0])
    with torch.no_grad():
        views = run.method.predict(normalise(crops.flatten(0, 1), *run.mean_std()))[run.head]
    torch.testing.assert_close(logits, views.unflatten(0, (200, 5)).mean(1), rtol=1e-4, atol=1e-4)
    correct = (logits.argmax(1).numpy() == run.data.test.labels).mean() * 100
    assert correct == pytest.approx(metrics["result"]["all"], abs=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "{tmp}/nowhere"], "run folder {tmp}/nowhere does not exist"),
    (["predict", "{tmp}/empty", "x.png"], "run folder {tmp}/empty has no config.yaml: only a finished run"),
    (["predict", "{run}", "{tmp}/missing.png"], "image {tmp}/missing.png not found"),
    (["predict", "{run}", "{tmp}/empty"], "image {tmp}/empty not found"),
    (["predict", "{run}", "{tmp}/bad.png"], "cannot read image {tmp}/bad.png"),
    (["predict", "{run}", "{tmp}/bad.png", "--top-k", "0"], "--top-k must be >= 1, got 0"),
    (["export", "{run}", "--format", "tflite"], "unknown export format 'tflite'; allowed: torchscript, onnx"),
    (["evaluate", "{run}", "model.name=resnet20"], "cannot load checkpoint {run}/checkpoint.pt into model.name=resnet20 "
                                                   "method.name=csa: "),
    (["evaluate", "{run}", "data.root={tmp}/five.npz", "data.groups=count"], "data.dataset=npz has 5 classes; the run in {run} was "
                                                        "trained on 10"),
])
def test_bad_input_is_one_line_naming_it(run_folder, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    five = np.zeros((5, 3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "five.npz", x_train=five, y_train=np.arange(5), x_test=five, y_test=np.arange(5))
    argv = [a.format(tmp=tmp_path, run=run_folder) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tailshift: error: " + message.format(tmp=tmp_path, run=run_folder))


def test_predict_scales_a_16_bit_image_as_training_does(run_folder, tmp_path):
    """A 16-bit PNG read by predict is the 8-bit image scaled by 255/65535, never clipped to white."""
    from tailshift.saved_run import read_image

    run = load_run(run_folder)
    grey = run.data.test.images[0, 0]  # H x W uint8: one channel as a greyscale file, read as the run's images
    eight, wide = tmp_path / "eight.png", tmp_path / "wide.png"
    Image.fromarray(grey).save(eight)
    Image.fromarray(grey.astype(np.uint16) * 257).save(wide)  # 16-bit: v * 257 is v on 0..65535
    assert Image.open(wide).mode.startswith("I")
    np.testing.assert_array_equal(read_image(wide, run), read_image(eight, run))
