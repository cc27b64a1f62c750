"""The context bank Q of CSA (paper Sec. 3.2, App. D.1): a FIFO of (image, background mask) pairs.

A ring buffer of preallocated tensors on the training device whose write position and
fill count live on the device too: a push is one scatter of the whole batch (the rows
not kept land in a spare slot), so it has the same shapes every step and never waits
for the host, and a draw is one gather.
"""
from __future__ import annotations

import torch

from ..tensors import gather_rows, is_channels_last, scatter_rows


class ContextBank:
    """FIFO of at most ``capacity`` (image C x H x W, mask 1 x H x W or C x H x W) pairs.

    Buffers are allocated on the first push, when the shapes and dtypes are known,
    on ``device`` (or the pushed tensors' device when ``device`` is None), with one
    spare slot past ``capacity`` that swallows the rows a push does not keep.
    Invariant: occupied slots are always ``0 .. len - 1`` (the ring only wraps
    once full), and ``_next`` (a device scalar, like the fill count ``_size``) is
    the slot the next push writes, i.e. the oldest entry once full.
    """

    def __init__(self, capacity: int, device: torch.device | str | None = None):
        if capacity < 1:
            raise ValueError(f"context bank capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device) if device is not None else None
        self._images: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        self._next = self._size = None  # device scalars, made with the buffers
        self._full = False  # known full on the host (a bank stays full until cleared)

    def __len__(self) -> int:
        return 0 if self._size is None else int(self._size)

    @property
    def is_full(self) -> bool:
        """Whether the bank holds ``capacity`` entries. Reads the device fill count only while
        the bank fills (once full it stays so until ``clear``), so a full bank costs no sync."""
        if not self._full and self._size is not None:
            self._full = bool(self._size == self.capacity)
        return self._full

    @property
    def fill(self) -> torch.Tensor | float:
        """The occupied share of the capacity: a device scalar once the buffers exist (no sync)."""
        return 0.0 if self._size is None else self._size / self.capacity

    def clear(self) -> None:
        """Forget every entry; the buffers are kept for reuse (CSA empties the bank every epoch)."""
        if self._size is not None:
            self._next.zero_()
            self._size.zero_()
        self._full = False

    def _allocate(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        # Same memory layout as what is pushed (channels-last in training), so fusing
        # drawn contexts with a batch stays an elementwise op on matching strides.
        device = self.device if self.device is not None else images.device

        def like(t: torch.Tensor) -> torch.Tensor:
            layout = torch.channels_last if is_channels_last(t) else torch.contiguous_format
            return torch.empty((self.capacity + 1, *t.shape[1:]), dtype=t.dtype, memory_format=layout, device=device)

        self._images, self._masks = like(images), like(masks)
        self._next = torch.zeros((), dtype=torch.long, device=device)
        self._size = torch.zeros((), dtype=torch.long, device=device)

    def push(self, images: torch.Tensor, masks: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Append the B pairs (or those where the boolean ``keep`` is True, in batch order),
        overwriting the oldest when full; of more than ``capacity``, the newest survive."""
        if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0] \
                or masks.shape[1] not in (1, images.shape[1]):
            raise ValueError(
                f"push needs images B x C x H x W and masks B x 1 (or C) x H x W, got {tuple(images.shape)} and "
                f"{tuple(masks.shape)}"
            )
        if self._images is None:
            self._allocate(images, masks)
        elif images.shape[1:] != self._images.shape[1:] or masks.shape[1:] != self._masks.shape[1:]:
            raise ValueError(
                f"bank holds images {tuple(self._images.shape[1:])} and masks {tuple(self._masks.shape[1:])}, "
                f"got {tuple(images.shape[1:])} and {tuple(masks.shape[1:])}"
            )
        if images.shape[0] == 0:
            return
        device = self._images.device
        keep = torch.ones(images.shape[0], dtype=torch.bool, device=device) if keep is None else keep.to(device)
        # The kept rows' ranks, on the device: the j-th kept row of the newest ``capacity`` goes to
        # slot next + j (mod capacity), every other row to the spare slot.
        rank = keep.long().cumsum(0)
        dropped = (rank[-1] - self.capacity).clamp(min=0)
        stored = keep & (rank > dropped)
        slots = torch.where(stored, (self._next + rank - 1 - dropped) % self.capacity, self.capacity)
        for buffer, source in ((self._images, images), (self._masks, masks)):
            scatter_rows(buffer, slots, source.detach().to(device))
        count = rank[-1] - dropped
        self._next.copy_((self._next + count) % self.capacity)
        self._size.copy_((self._size + count).clamp(max=self.capacity))

    def _slots_oldest_first(self) -> torch.Tensor:
        size = len(self)
        start = self._next if size == self.capacity else 0
        return (start + torch.arange(size, device=self._images.device)) % self.capacity

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of all entries, oldest first."""
        if len(self) == 0:
            raise RuntimeError("the context bank is empty")
        slots = self._slots_oldest_first()
        return gather_rows(self._images, slots), gather_rows(self._masks, slots)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` (image, mask) pairs in random order, reproducible under ``generator``.

        For ``n <= len`` they are the first ``n`` of a random permutation
        (distinct entries, the release's behaviour with V = B); for ``n > len``
        they are drawn uniformly with replacement, since no permutation is long enough.
        A full bank's draw reads nothing from the device.
        """
        size = self.capacity if self.is_full else len(self)
        if size == 0:
            raise RuntimeError("cannot draw from an empty context bank")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if n <= size:
            slots = torch.randperm(size, generator=generator, device=gen_device)[:n]
        else:
            slots = torch.randint(size, (n,), generator=generator, device=gen_device)
        slots = slots.to(self._images.device)
        return gather_rows(self._images, slots), gather_rows(self._masks, slots)

    def state_dict(self) -> dict:
        """Everything needed to restore the bank exactly (tensors are copies, safe to keep across pushes)."""
        return {
            "capacity": self.capacity,
            "next": 0 if self._next is None else int(self._next),
            "size": len(self),
            "images": None if self._images is None else self._images[: self.capacity].clone(),
            "masks": None if self._masks is None else self._masks[: self.capacity].clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint bank capacity {state['capacity']} != this bank's {self.capacity}")
        self._full = False
        if state["images"] is None:
            self._images = self._masks = self._next = self._size = None
            return
        self._allocate(state["images"], state["masks"])
        self._images[: self.capacity].copy_(state["images"])
        self._masks[: self.capacity].copy_(state["masks"])
        self._next.fill_(int(state["next"]))
        self._size.fill_(int(state["size"]))
