import pytest
import torch

from tailshift.methods.context_bank import ContextBank
from tailshift.tensors import gather_rows, scatter_rows

LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_gather_rows_equals_indexing_and_keeps_the_layout(layout, dtype):
    x = torch.randint(0, 200, (9, 3, 4, 5)).to(dtype).contiguous(memory_format=layout)
    index = torch.tensor([4, 0, 4, 8, 2])
    out = gather_rows(x, index)
    assert torch.equal(out, x[index])
    assert out.is_contiguous(memory_format=layout)


def test_gather_rows_on_other_shapes_and_empty_index():
    labels = torch.arange(10) * 3
    assert gather_rows(labels, torch.tensor([9, 1])).tolist() == [27, 3]
    x = torch.rand(6, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    assert gather_rows(x, torch.tensor([], dtype=torch.long)).shape == (0, 3, 2, 2)


@pytest.mark.parametrize("source_layout", LAYOUTS)
@pytest.mark.parametrize("out_layout", LAYOUTS)
def test_scatter_rows_writes_only_its_rows(source_layout, out_layout):
    x = torch.rand(3, 3, 4, 4).contiguous(memory_format=source_layout)
    ring = torch.zeros(6, 3, 4, 4).contiguous(memory_format=out_layout)
    index = torch.tensor([4, 0, 3])
    scatter_rows(ring, index, x)
    assert torch.equal(ring[index], x)
    assert (ring[[1, 2, 5]] == 0).all()
    assert ring.is_contiguous(memory_format=out_layout)


def test_bank_keeps_channels_last_images_through_push_and_draw():
    images = torch.rand(4, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    masks = torch.rand(4, 1, 4, 4)
    bank = ContextBank(4)
    bank.push(images, masks)
    drawn, drawn_masks = bank.draw(4, torch.Generator().manual_seed(0))
    assert drawn.is_contiguous(memory_format=torch.channels_last)
    order = [int((images == d).all(dim=(1, 2, 3)).nonzero()) for d in drawn]
    assert sorted(order) == [0, 1, 2, 3]
    assert torch.equal(drawn_masks, masks[order])
