"""CSA's context shift shown: pixels back from the pipeline's floats, the rows of the figure, and
the illustration a CSA run logs (the base method shows nothing)."""
import numpy as np
import torch

from conftest import tiny_prepared
from tailshift.data.pipeline import DeviceArrays
from tailshift.methods import METHODS
from tailshift.methods.base import TrainingImages
from tailshift.methods.context_shift import FIGURE3_LAMBDAS, context_shift_example, context_shift_rows, to_uint8
from tailshift.models import create_model


def test_to_uint8_undoes_the_pipeline_normalisation():
    raw = np.random.default_rng(0).integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    x = torch.from_numpy(raw).float() / 255
    assert np.array_equal(to_uint8(x), raw)
    assert np.array_equal(to_uint8(x.numpy()), raw)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert np.array_equal(to_uint8(normalised, mean, std), raw)
    assert to_uint8(torch.full((1, 1, 2, 2), 3.0)).max() == 255  # out-of-range values are clipped


def test_context_shift_rows():
    torch.manual_seed(0)
    contexts, balanced = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    masks = torch.zeros(5, 1, 8, 8)
    masks[:, :, :, 4:] = 1.0  # right half is background
    fused = {0.5: torch.rand(5, 3, 8, 8), 1.0: torch.rand(5, 3, 8, 8)}
    rows = context_shift_rows(contexts, masks, balanced, fused)
    labels = [label for label, _ in rows]
    assert len(rows) == 4 + len(fused) and labels[-1] == "fused\nλ = 1" and labels[3].startswith("balanced")
    assert all(a.dtype == np.uint8 and a.shape[0] == 5 for _, a in rows)
    image, mask, context = rows[0][1], rows[1][1], rows[2][1]
    assert mask.shape == (5, 1, 8, 8) and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(context[..., 4:], image[..., 4:])  # background kept
    assert not context[..., :4].any()  # object masked out
    assert np.array_equal(rows[3][1], to_uint8(balanced))


def _training_images(data, mean=None, std=None) -> TrainingImages:
    return TrainingImages(DeviceArrays(data.train, torch.device("cpu"), mean, std), data.train.labels, 32, 4, mean, std)


def _method(name, data, **params):
    torch.manual_seed(0)
    backbone = create_model("lenet2d", in_channels=3, image_size=28)
    return METHODS.get(name)(backbone, data.num_classes, data.class_counts, 4, params).eval()


def test_context_shift_example_shows_one_class_aware_batch_fused_at_each_lambda():
    data = tiny_prepared(channels=3)
    images = _training_images(data, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    rows, captions, info = context_shift_example(_method("csa", data, delta=0.0), images, 6, FIGURE3_LAMBDAS)
    assert [label.split("\n")[0] for label, _ in rows] == [
        "confident", "background mask", "context", "balanced", "fused", "fused", "fused", "fused"]
    assert all(a.dtype == np.uint8 and a.shape[0] == 6 for _, a in rows)
    # the balanced row: the first image of each class in the class-aware batch, as the pipeline stored it
    assert len(set(info["balanced_labels"])) == 6 and captions == {3: [f"class {c}" for c in info["balanced_labels"]]}
    assert np.array_equal(rows[3][1], data.train.images[info["balanced_indices"]])
    assert info["lambdas"] == [0.25, 0.5, 0.75, 1.0] and info["bank_entries"] == info["bank_capacity"] == 32
    again = context_shift_example(_method("csa", data, delta=0.0), images, 6, FIGURE3_LAMBDAS)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(rows, again[0]))  # seeded: the same picture


def test_csa_illustrates_its_context_shift_once_an_image_is_confident():
    data = tiny_prepared(channels=3)
    images = _training_images(data)
    rows = _method("csa", data, delta=0.0).illustration(images)
    assert len(rows) == 4 + len(FIGURE3_LAMBDAS) and all(a.shape[0] == 8 for _, a in rows)
    never_confident = _method("csa", data)
    never_confident.params.delta = 1.01
    assert never_confident.illustration(images) is None
    assert _method("ce", data).illustration(images) is None  # a method with nothing to show
