"""Figure 3's plotting helpers on random arrays, and figure3 end to end on tiny generated data."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import tailshift.reproduce.figures as figures
from conftest import tiny_prepared
from tailshift import plots


def _png_size(path):
    assert path.exists() and path.stat().st_size > 2000
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_to_uint8_undoes_the_pipeline_normalisation():
    raw = np.random.default_rng(0).integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    x = torch.from_numpy(raw).float() / 255
    assert np.array_equal(plots.to_uint8(x), raw)
    assert np.array_equal(plots.to_uint8(x.numpy()), raw)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert np.array_equal(plots.to_uint8(normalised, mean, std), raw)
    assert plots.to_uint8(torch.full((1, 1, 2, 2), 3.0)).max() == 255  # out-of-range values are clipped


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


def test_context_shift_rows():
    torch.manual_seed(0)
    contexts, balanced = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    masks = torch.zeros(5, 1, 8, 8)
    masks[:, :, :, 4:] = 1.0  # right half is background
    fused = {0.5: torch.rand(5, 3, 8, 8), 1.0: torch.rand(5, 3, 8, 8)}
    rows = plots.context_shift_rows(contexts, masks, balanced, fused)
    labels = [label for label, _ in rows]
    assert len(rows) == 4 + len(fused) and labels[-1] == "fused\nλ = 1" and labels[3].startswith("balanced")
    assert all(a.dtype == np.uint8 and a.shape[0] == 5 for _, a in rows)
    image, mask, context = rows[0][1], rows[1][1], rows[2][1]
    assert mask.shape == (5, 1, 8, 8) and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(context[..., 4:], image[..., 4:])  # background kept
    assert not context[..., :4].any()  # object masked out
    assert np.array_equal(rows[3][1], plots.to_uint8(balanced))


def test_figure3_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    """figure3 with the shipped CFashion-LT configs, the data swapped for the tiny coloured set."""
    data = tiny_prepared(channels=3, counts=(120, 80, 60, 40, 30, 20, 20, 16, 14, 12))
    monkeypatch.setattr(figures, "prepare_data", lambda cfg: data)
    out = tmp_path / "fig3"
    summary = figures.figure3(None, 1, 1, out, ["train.epochs=4", "train.batch_size=32", "progress=false",
                                                "train.optim.lr=0.05", "train.checkpoint=false"], None)
    assert _png_size(out / "figure3.png")[1] > 600 and _png_size(out / "figure3_bank.png")[0] > 600
    saved = json.loads((out / "figure3.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["models"]) == {"ce", "cbrs", "csa"} and saved["models"]["csa"]["cam_head"] == "balanced"
    assert len(saved["samples"]) == 8 and {s["group"] for s in saved["samples"]} == {"many", "few"}
    assert all(len(m["p_true"]) == 8 and 0 <= m["test"]["all"] <= 100 for m in saved["models"].values())
    bank = saved["context_shift"]
    assert 0 < bank["bank_entries"] <= bank["bank_capacity"] == 32 and len(bank["balanced_labels"]) == 10
    assert (out / "runs" / "csa" / "metrics.json").exists()


def test_figure3_needs_a_coloured_dataset(tmp_path):
    with pytest.raises(ValueError, match="coloured dataset"):
        figures.figure3(["fashion-lt"], 1, 1, tmp_path, [], None)
