import numpy as np
import torch

from tailshift.data.arrays import ArrayDataset
from tailshift.data.pipeline import DeviceArrays, random_crop_flip


def reference_crop_flip(image, padding, oy, ox, flip):
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    h, w = image.shape[-2:]
    out = padded[:, oy:oy + h, ox:ox + w]
    return out.flip(-1) if flip else out


def test_batched_crop_flip_equals_per_image_reference():
    images = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, 2, gen)
    gen = torch.Generator().manual_seed(0)
    oy = torch.randint(0, 5, (16,), generator=gen)
    ox = torch.randint(0, 5, (16,), generator=gen)
    flip = torch.rand(16, generator=gen) < 0.5
    for i in range(16):
        ref = reference_crop_flip(images[i], 2, int(oy[i]), int(ox[i]), bool(flip[i]))
        assert torch.equal(out[i], ref)
    assert flip.any() and (~flip).any()


def test_batches_are_normalised_and_gathered_by_index():
    images = np.arange(4 * 1 * 2 * 2, dtype=np.uint8).reshape(4, 1, 2, 2) * 10
    arrays = DeviceArrays(ArrayDataset(images, np.arange(4)), "cpu", mean=(0.5,), std=(0.25,))
    batch = arrays.batch(torch.tensor([2, 0]))
    assert batch.y.tolist() == [2, 0] and batch.index.tolist() == [2, 0] and not batch.augmented
    expected = (torch.from_numpy(images[[2, 0]]).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(batch.x, expected)
    seen = torch.cat([b.y for b in arrays.iterate(3)])
    assert seen.tolist() == [0, 1, 2, 3]


def test_an_epochs_indices_reach_the_device_once_per_stream_not_once_per_step(monkeypatch):
    """Every step's index is a slice of one copy of the epoch's indices made when the epoch starts (on a GPU,
    one host-to-device copy per stream and epoch instead of a blocking copy from pageable memory per step)."""
    images = np.zeros((10, 1, 2, 2), dtype=np.uint8)
    arrays = DeviceArrays(ArrayDataset(images, np.arange(10) % 2), "cpu")
    given = {"uniform": torch.arange(10).flip(0), "balanced": torch.arange(10)}
    seen = []
    original = DeviceArrays.batch

    def spy(self, index, *args, **kwargs):
        seen.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(DeviceArrays, "batch", spy)
    batches = list(arrays.epoch(given, steps=4, batch_size=3, seed=0))
    assert len(batches) == 4 and [b["uniform"].index.tolist() for b in batches[:1]] == [[9, 8, 7]]
    storages = {index.untyped_storage().data_ptr() for index in seen}
    assert len(storages) == 2  # one copy per stream, sliced by every step
    assert not storages & {idx.untyped_storage().data_ptr() for idx in given.values()}


def test_a_batch_keeps_its_stored_images_before_the_crop_and_their_normalisation():
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    arrays = DeviceArrays(ArrayDataset(images, np.arange(6)), "cpu", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2),
                          augment="crop_flip", padding=2)
    batch = arrays.batch(torch.tensor([4, 1, 3]), torch.Generator().manual_seed(0))
    assert torch.equal(batch.raw.images, torch.from_numpy(images[[4, 1, 3]]))
    assert not torch.equal(batch.raw.normalise(batch.raw.images.float() / 255), batch.x)  # x is cropped, raw not
    cropped = random_crop_flip(batch.raw.images, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.raw.normalise(cropped.float() / 255), batch.x)
