"""The plotting helpers on random arrays; figure3 (LeNet) and figures 9, 10, 11 (CIFAR) end to end on tiny
generated data."""
import json

import numpy as np
import pytest
from PIL import Image

import tailshift.reproduce.figures as figures
from conftest import tiny_prepared, write_cifar100
from tailshift import plots
from tailshift.config import ConfigError, load_config
from tailshift.data.build import prepare_data
from tailshift.data.longtail import profile_counts
from tailshift.data.sampling import Sampler, StreamRequest, class_probabilities, stream_spec
from tailshift.engine import build_method
from tailshift.resolve import resolve_run
from tailshift.reproduce import COMMANDS, curves, figure_commands


def _png_size(path):
    assert path.exists() and path.stat().st_size > 2000
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_cam_overlay_blends_image_and_jet():
    image = np.full((1, 6, 6), 255, dtype=np.uint8)  # grey input becomes RGB
    cam = np.linspace(0, 1, 36).reshape(6, 6)
    assert np.allclose(plots.cam_overlay(image, cam, alpha=0.0), 1.0)
    heat = plots.cam_overlay(image, cam, alpha=1.0)
    assert heat.shape == (6, 6, 3)
    assert heat[0, 0, 2] > heat[0, 0, 0] and heat[-1, -1, 0] > heat[-1, -1, 2]  # jet: blue low, red high
    half = plots.cam_overlay(image, cam, alpha=0.5)
    assert np.allclose(half, 0.5 + 0.5 * heat)


def test_cam_grid_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    n = 4
    images = rng.integers(0, 256, size=(n, 3, 28, 28), dtype=np.uint8)
    cams = {"CE": rng.random((n, 28, 28)), "CSA": rng.random((n, 28, 28))}
    path = plots.cam_grid(images, cams, [f"class {i}" for i in range(n)], tmp_path / "cams.png", "title",
                          captions={"CE": [f"p = {i / 10}" for i in range(n)]})
    width, height = _png_size(path)
    # figsize (1.25 * 3 + 1) x (1.3 * 4) inches at 130 dpi, then cropped to the drawn content
    assert 350 < width < 800 and 450 < height < 800


def test_image_rows_writes_a_png_with_grey_and_colour_rows(tmp_path):
    rng = np.random.default_rng(1)
    rows = [("colour", rng.integers(0, 256, size=(6, 3, 28, 28), dtype=np.uint8)),
            ("grey", rng.integers(0, 256, size=(6, 1, 28, 28), dtype=np.uint8)),
            ("short row", rng.integers(0, 256, size=(3, 3, 28, 28), dtype=np.uint8))]
    path = plots.image_rows(rows, tmp_path / "rows.png", "title", captions={1: [f"c{i}" for i in range(6)]})
    width, height = _png_size(path)
    # figsize (0.95 * 6 + 1.4) x (1.0 * 3 + 0.4) inches at 130 dpi, then cropped
    assert 600 < width < 1000 and 300 < height < 500


def test_embeddings_colour_scale_spans_the_labels_and_follows_colour_label(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    drawn = []
    scatter, colorbar = Axes.scatter, Figure.colorbar

    def spy_scatter(ax, *args, **kwargs):
        drawn.append(("point", kwargs["color"]))
        return scatter(ax, *args, **kwargs)

    def spy_colorbar(fig, mappable, **kwargs):
        drawn.append(("bar", mappable.norm.vmin, mappable.norm.vmax))
        return colorbar(fig, mappable, **kwargs)

    monkeypatch.setattr(Axes, "scatter", spy_scatter)
    monkeypatch.setattr(Figure, "colorbar", spy_colorbar)
    rng = np.random.default_rng(0)

    def draw(num_classes, **kwargs):
        drawn.clear()
        panels = {"a": (rng.normal(size=(60, 2)), np.arange(60) % num_classes)}
        _png_size(plots.embeddings(panels, num_classes, tmp_path / "e.png", "t", **kwargs))
        return [d[1] for d in drawn if d[0] == "point"], [d[1:] for d in drawn if d[0] == "bar"]

    viridis, tab10 = plt.get_cmap("viridis"), plt.get_cmap("tab10")
    colours, bars = draw(3, colour_label="rank by training count")  # few classes, a label: the sequential scale
    assert colours == [viridis(0.0), viridis(0.5), viridis(1.0)] and bars == [(0, 2)]
    colours, bars = draw(3)  # few classes, no label: one tab10 colour each and a legend
    assert colours == [tab10(0), tab10(1), tab10(2)] and bars == []
    colours, bars = draw(20)  # the last label is the light end of the bar
    assert colours[0] == viridis(0.0) and colours[-1] == viridis(1.0) and bars == [(0, 19)]


def test_figure3_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    """figure3 with the shipped CFashion-LT configs, the data swapped for the tiny coloured set."""
    data = tiny_prepared(channels=3, counts=(120, 80, 60, 40, 30, 20, 20, 16, 14, 12))
    monkeypatch.setattr(figures, "prepare_data", lambda cfg: data)
    out = tmp_path / "fig3"
    summary = figure_commands.figure3(out, ["train.epochs=4", "train.batch_size=32", "progress=false",
                                            "train.optim.lr=0.05", "train.checkpoint=false"])
    assert _png_size(out / "figure3.png")[1] > 600 and _png_size(out / "figure3_bank.png")[0] > 600
    saved = json.loads((out / "figure3.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["models"]) == {"ce", "cbrs", "csa"} and saved["models"]["csa"]["cam_head"] == "balanced"
    assert len(saved["samples"]) == 8 and {s["group"] for s in saved["samples"]} == {"many", "few"}
    assert all(len(m["p_true"]) == 8 and 0 <= m["test"]["all"] <= 100 for m in saved["models"].values())
    bank = saved["context_shift"]
    assert 0 < bank["bank_entries"] <= bank["bank_capacity"] == 32 and len(bank["balanced_labels"]) == 10
    assert (out / "runs" / "csa" / "metrics.json").exists()


def test_figure3_refuses_a_readout_csa_cannot_map_before_training_any_run(tmp_path):
    out = tmp_path / "fig3"
    with pytest.raises(ConfigError, match="model.readout=token: method csa reads the patch grid"):
        figure_commands.figure3(out, ["model.readout=token", "train.epochs=1"])
    assert not (out / "runs").exists()  # CE and CB-RS did not train first


def test_figure3_needs_a_coloured_dataset(tmp_path):
    with pytest.raises(ValueError, match="coloured dataset"):
        figure_commands.figure3(tmp_path, datasets=["fashion-lt"])



@pytest.mark.parametrize("figure", ["figure1", "figure2", "figure4", "figure7"])
def test_mnist_family_figures_without_data_say_so_in_one_line(figure, tmp_path, monkeypatch):
    from tailshift.data.arrays import DataError
    from tailshift.reproduce.grid import Grid

    monkeypatch.setattr(Grid, "available_datasets", lambda grid, mnist_root=None: [])
    with pytest.raises(DataError, match=rf"^no data found for {figure}: pass --datasets \(and data.root=... or "
                                        r"--mnist-root\), or see `tailshift download`$"):
        COMMANDS.get(figure)(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_figures_2_and_7_need_a_grey_and_a_coloured_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"^figure2 needs a grey dataset \(fashion-lt or mnist-lt\), got cfashion-lt$"):
        COMMANDS.get("figure2")(tmp_path, datasets=["cfashion-lt"])
    with pytest.raises(ValueError,
                       match=r"^figure7 needs a coloured dataset \(cfashion-lt or cmnist-lt\), got fashion-lt$"):
        COMMANDS.get("figure7")(tmp_path, datasets=["fashion-lt"])

#: a one-epoch ResNet-20 on the tiny CIFAR-100 folder (two training images a class, no long tail)
TINY_CIFAR = ("data.longtail.profile=none", "data.longtail.n_max=2", "train.epochs=1", "train.optim.warmup_epochs=0",
              "train.batch_size=64", "model.name=resnet20", "csa:method.params.warmup_epochs=0")


def test_figure9_end_to_end_on_generated_cifar100(tmp_path, monkeypatch):
    """CE re-sampling and CSA at each gamma (two of them, for time); CSA's balanced branch draws from the power
    sampler at q = 1 - gamma."""
    assert curves.GAMMAS == (0.0, 0.25, 0.5, 0.75, 1.0)  # the default grid, Figure 1's
    monkeypatch.setattr(curves, "GAMMAS", (0.0, 0.5))
    write_cifar100(tmp_path, 2)
    out = tmp_path / "out"
    table = curves.figure9(out, [f"data.root={tmp_path}", *TINY_CIFAR], datasets=["cifar100-lt"], seeds=1, workers=1,
                           rhos=(100,))
    assert list(table) == ["cifar100-lt rho 100: CE re-sampling", "cifar100-lt rho 100: CSA"]
    assert all(list(row) == [0.0, 0.5] and all(a.runs == 1 for a in row.values()) for row in table.values())
    _png_size(out / "figure9.png")
    md = (out / "figure9.md").read_text()
    assert md.startswith("# Figure 9: re-sampling vs CSA") and "without printed numbers" in md
    assert "| Study: method | γ=0.0 | γ=0.5 |\n|---|---|---|\n| cifar100-lt rho 100: CE re-sampling | " in md
    assert md.count("| cifar100-lt rho 100: CSA | ") == 1
    assert set(json.loads((out / "figure9.json").read_text())["table"]["cifar100-lt rho 100: CSA"]) == \
        {"0.0", "0.5"}

    runs = out / "runs" / "cifar100-lt-rho100"
    ce = load_config(runs / "resample-gamma0.0" / "seed0" / "config.yaml")
    assert ce.method.name == "resample" and ce.method.params == {"q": 1.0} and ce.model.name == "resnet20"
    cfg = load_config(runs / "csa-gamma0.5" / "seed0" / "config.yaml")
    assert cfg.method.name == "csa" and cfg.method.params["warmup_epochs"] == 0
    # the balanced stream the CSA run drew from, on a long-tailed label set: class frequencies n^q / sum n^q
    data = prepare_data(cfg.data)
    request = build_method(resolve_run(cfg), data).stages()[0].streams["balanced"]
    assert request == StreamRequest("power", 0.5)
    counts = np.array(profile_counts("exp", 10, 500, 100))
    labels = np.repeat(np.arange(10), counts)
    s = cfg.sampling
    sampler = Sampler(labels, stream_spec(request, s.balanced, s.per_class, s.balanced_epoch), 0, "balanced")
    drawn = np.concatenate([sampler.epoch_indices(e) for e in range(20)])
    share = np.bincount(labels[drawn], minlength=10) / len(drawn)
    assert np.abs(share - class_probabilities(counts, 0.5)).max() < 0.01
    assert np.abs(share - counts / counts.sum()).max() > 0.1 and np.abs(share - 0.1).max() > 0.05


def test_figure9_refuses_an_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown Table 2 dataset 'fashion-lt'; known: cifar10-lt, cifar100-lt"):
        curves.figure9(tmp_path, datasets=["fashion-lt"])


def test_figures_11_12_and_10_end_to_end_on_generated_cifar100(tmp_path):
    """Figure 11 (Grad-CAM, CE / CB-RS / CSA), 12 (tail images above delta) and 10 (test features), sharing runs."""
    write_cifar100(tmp_path, 2)
    out = tmp_path / "out"
    overrides = [f"data.root={tmp_path}", *TINY_CIFAR, "csa:method.params.delta=0"]  # every tail image passes delta
    summary = figure_commands.figure11(out, overrides, rhos=(50,))
    assert summary["dataset"] == "cifar100-lt rho 50"
    assert set(summary["models"]) == {"ce", "cbrs", "csa"} and summary["models"]["csa"]["cam_head"] == "balanced"
    assert len(summary["samples"]) == 8 and {s["group"] for s in summary["samples"]} == {"many", "few"}
    tail = summary["tail_above_delta"]
    # the release's index groups: classes 71-99 are few-shot, two training images each; two per class, rarest first
    assert tail["delta"] == 0 and tail["few_images_scanned"] == 58
    assert [s["label"] for s in tail["samples"]] == [71, 71, 72, 72, 73, 73, 74, 74] and len(tail["p_true"]) == 8
    for name in ("figure11.png", "figure11_bank.png", "figure12.png"):
        _png_size(out / name)
    assert json.loads((out / "figure11.json").read_text()) == json.loads(json.dumps(summary))
    trained = {m: (out / "runs" / "cifar100-lt-rho50" / m / "checkpoint.pt").stat().st_mtime_ns for m in ("ce", "cbrs", "csa")}

    figure10 = figure_commands.figure10(out, overrides, datasets=["cifar100-lt"], rhos=(50, 10))
    assert {m: (out / "runs" / "cifar100-lt-rho50" / m / "checkpoint.pt").stat().st_mtime_ns for m in trained} == trained
    assert figure10["models"] == {m: {k: r[k] for k in ("head", "test")} for m, r in summary["models"].items()}
    _png_size(out / "figure10.png")
    assert json.loads((out / "figure10.json").read_text())["dataset"] == "cifar100-lt rho 50"


def test_principal_plane_keeps_the_widest_spread():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 5)) * np.array([10.0, 0.1, 5.0, 0.1, 0.1])
    plane = figures._principal_plane(points)
    assert plane.shape == (500, 2) and np.allclose(plane.mean(axis=0), 0)
    assert np.allclose(np.abs(np.corrcoef(plane[:, 0], points[:, 0])[0, 1]), 1, atol=1e-3)
    assert np.allclose(np.abs(np.corrcoef(plane[:, 1], points[:, 2])[0, 1]), 1, atol=0.01)


def test_cifar_figures_are_registered_commands():
    assert {"figure9", "figure10", "figure11"} <= set(COMMANDS.names())
