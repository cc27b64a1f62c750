import pytest
import torch

from tailshift.methods.context_bank import ContextBank


def _batch(start, n):
    """Images whose every pixel holds the sample's id, masks holding id / 100."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return ids.view(-1, 1, 1, 1).expand(n, 3, 2, 2).clone(), (ids / 100).view(-1, 1, 1, 1).expand(n, 1, 2, 2).clone()


def _ids(images):
    return images[:, 0, 0, 0].long().tolist()


def test_fifo_order_and_capacity():
    bank = ContextBank(4)
    assert len(bank) == 0 and not bank.is_full
    bank.push(*_batch(0, 3))
    assert len(bank) == 3 and _ids(bank.contents()[0]) == [0, 1, 2]
    bank.push(*_batch(3, 2))
    assert bank.is_full and _ids(bank.contents()[0]) == [1, 2, 3, 4]
    bank.push(*_batch(5, 3))
    images, masks = bank.contents()
    assert _ids(images) == [4, 5, 6, 7]
    torch.testing.assert_close(masks[:, 0, 0, 0], torch.tensor([4, 5, 6, 7]) / 100)


def test_oversized_push_keeps_newest():
    bank = ContextBank(4)
    bank.push(*_batch(0, 2))
    bank.push(*_batch(2, 6))
    assert _ids(bank.contents()[0]) == [4, 5, 6, 7]
    bank.push(*_batch(8, 0))  # an empty selection is a no-op
    assert len(bank) == 4


def test_clear_and_empty_errors():
    bank = ContextBank(4)
    bank.push(*_batch(0, 4))
    bank.clear()
    assert len(bank) == 0 and not bank.is_full
    with pytest.raises(RuntimeError):
        bank.draw(2)
    bank.push(*_batch(10, 1))
    assert _ids(bank.contents()[0]) == [10]


def test_push_of_kept_rows_equals_pushing_the_selection():
    images, masks = _batch(0, 6)
    keep = torch.tensor([True, False, False, True, False, True])
    chosen, reference = ContextBank(4), ContextBank(4)
    for bank, args in ((chosen, (images, masks, keep)), (reference, (images[keep], masks[keep]))):
        bank.push(*_batch(10, 3))
        bank.push(*args)  # wraps around the ring
    for got, want in zip(chosen.contents(), reference.contents()):
        assert torch.equal(got, want)
    assert _ids(chosen.contents()[0]) == [12, 0, 3, 5]
    chosen.push(images, masks, torch.zeros(6, dtype=torch.bool))  # nothing kept: a no-op
    assert _ids(chosen.contents()[0]) == [12, 0, 3, 5]


def test_per_channel_channels_last_masks_keep_their_layout():
    cl = torch.channels_last
    images, masks = _batch(0, 3)
    images, masks = images.contiguous(memory_format=cl), masks.expand(3, 3, 2, 2).contiguous(memory_format=cl)
    bank = ContextBank(3)
    bank.push(images, masks)
    drawn_images, drawn_masks = bank.draw(3, torch.Generator().manual_seed(0))
    assert drawn_images.is_contiguous(memory_format=cl) and drawn_masks.is_contiguous(memory_format=cl)
    assert torch.equal(drawn_masks[:, 0], drawn_images[:, 0] / 100)


def test_push_shape_checks():
    bank = ContextBank(4)
    bank.push(*_batch(0, 2))
    with pytest.raises(ValueError):
        bank.push(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError):
        bank.push(torch.zeros(2, 3, 2, 2), torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError, match=r"masks B x 1 \(or C\)"):
        bank.push(torch.zeros(2, 3, 2, 2), torch.zeros(2, 2, 2, 2))
    with pytest.raises(ValueError, match="capacity"):
        ContextBank(0)


def test_push_stores_a_detached_copy():
    bank = ContextBank(2)
    images, masks = _batch(0, 2)
    images.requires_grad_(True)
    bank.push(images, masks)
    stored, _ = bank.contents()
    assert not stored.requires_grad
    masks.fill_(9)
    assert (bank.contents()[1] != 9).all()


def test_draw_is_a_permutation_and_deterministic():
    bank = ContextBank(6)
    bank.push(*_batch(0, 6))
    a, ma = bank.draw(6, torch.Generator().manual_seed(3))
    b, _ = bank.draw(6, torch.Generator().manual_seed(3))
    assert sorted(_ids(a)) == list(range(6))
    assert _ids(a) == _ids(b)
    torch.testing.assert_close(ma[:, 0, 0, 0], a[:, 0, 0, 0] / 100)  # pairs stay together
    assert len(set(_ids(bank.draw(4, torch.Generator().manual_seed(1))[0]))) == 4
    many, _ = bank.draw(20, torch.Generator().manual_seed(0))  # more than stored: with replacement
    assert many.shape[0] == 20 and set(_ids(many)) <= set(range(6))


def test_state_dict_round_trip():
    bank = ContextBank(4)
    bank.push(*_batch(0, 3))
    bank.push(*_batch(3, 3))  # wrapped ring: oldest is not in slot 0
    state = bank.state_dict()
    bank.push(*_batch(6, 1))  # the saved state must not follow later pushes
    restored = ContextBank(4)
    restored.load_state_dict(state)
    assert len(restored) == 4 and _ids(restored.contents()[0]) == [2, 3, 4, 5]
    restored.push(*_batch(6, 1))
    assert _ids(restored.contents()[0]) == _ids(bank.contents()[0]) == [3, 4, 5, 6]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert _ids(restored.draw(4, g1)[0]) == _ids(bank.draw(4, g2)[0])
    empty = ContextBank(4)
    empty.load_state_dict(ContextBank(4).state_dict())
    assert len(empty) == 0
    with pytest.raises(ValueError, match="capacity"):
        ContextBank(8).load_state_dict(state)


class _SlotFifo:
    """The bank before its counters moved to the device, slot by slot: row j of a push goes to
    slot ``next``, then ``next`` advances (mod capacity); a draw permutes the occupied slots."""

    def __init__(self, capacity):
        self.capacity, self.slots, self.next, self.size = capacity, [None] * capacity, 0, 0

    def push(self, ids):
        for i in ids[-self.capacity:]:
            self.slots[self.next] = i
            self.next = (self.next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def draw(self, n, generator):
        slots = torch.randperm(self.size, generator=generator)[:n] if n <= self.size \
            else torch.randint(self.size, (n,), generator=generator)
        return [self.slots[s] for s in slots.tolist()]


@pytest.mark.parametrize("capacity", [4, 7])
def test_ring_with_device_counters_draws_the_contexts_of_the_slot_by_slot_bank(capacity):
    rng = torch.Generator().manual_seed(capacity)
    bank, reference, start = ContextBank(capacity), _SlotFifo(capacity), 0
    for step in range(40):
        if step % 13 == 12:  # emptied, as CSA does every epoch
            bank.clear()
            reference.next = reference.size = 0
        n = int(torch.randint(0, 2 * capacity, (), generator=rng))  # some pushes hold more than fit
        keep = torch.rand(n, generator=rng) < 0.6
        bank.push(*_batch(start, n), keep)
        reference.push([start + i for i in range(n) if keep[i]])
        start += n
        assert len(bank) == reference.size and bank.is_full == (reference.size == capacity)
        assert int(bank._next) == reference.next
        if reference.size:
            draws = int(torch.randint(1, capacity + 3, (), generator=rng))  # with replacement past len
            seed = int(torch.randint(0, 2**31, (), generator=rng))
            images, masks = bank.draw(draws, torch.Generator().manual_seed(seed))
            assert _ids(images) == reference.draw(draws, torch.Generator().manual_seed(seed))
            torch.testing.assert_close(masks[:, 0, 0, 0], images[:, 0, 0, 0] / 100)
