"""The context bank Q of CSA (paper Sec. 3.2, App. D.1): a FIFO of (image, background mask) pairs.

A ring buffer of preallocated tensors on the training device: a push is at
most two slice copies and a draw one gather, with no Python list of tensors
and no ``torch.cat`` growth per step.
"""
from __future__ import annotations

import torch

from ..tensors import gather_rows, gather_rows_into, is_channels_last


class ContextBank:
    """FIFO of at most ``capacity`` (image C x H x W, mask 1 x H x W or C x H x W) pairs.

    Buffers are allocated on the first push, when the shapes and dtypes are known,
    on ``device`` (or the pushed tensors' device when ``device`` is None).
    Invariant: occupied slots are always ``0 .. len - 1`` (the ring only wraps
    once full), and ``_next`` is the slot the next push writes, i.e. the oldest
    entry once full.
    """

    def __init__(self, capacity: int, device: torch.device | str | None = None):
        if capacity < 1:
            raise ValueError(f"context bank capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device) if device is not None else None
        self._images: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def is_full(self) -> bool:
        return self._size == self.capacity

    def clear(self) -> None:
        """Forget every entry; the buffers are kept for reuse (CSA empties the bank every epoch)."""
        self._next = 0
        self._size = 0

    def _allocate(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        # Same memory layout as what is pushed (channels-last in training), so fusing
        # drawn contexts with a batch stays an elementwise op on matching strides.
        def like(t: torch.Tensor) -> torch.Tensor:
            layout = torch.channels_last if is_channels_last(t) else torch.contiguous_format
            return torch.empty((self.capacity, *t.shape[1:]), dtype=t.dtype, memory_format=layout,
                               device=self.device if self.device is not None else t.device)

        self._images, self._masks = like(images), like(masks)

    def push(self, images: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Append B pairs, overwriting the oldest when full; of more than ``capacity``, the newest survive.

        ``rows``: push only ``images[rows]``, ``masks[rows]`` (in that order), gathered straight
        into the ring buffer instead of through a selected copy.
        """
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
        if rows is None:
            rows = torch.arange(images.shape[0], device=images.device)
        n = rows.shape[0]
        if n == 0:
            return
        if n > self.capacity:
            rows, n = rows[-self.capacity :], self.capacity
        images, masks, rows = images.detach(), masks.detach(), rows.to(images.device)
        first = min(n, self.capacity - self._next)
        for buffer, source in ((self._images, images), (self._masks, masks)):
            gather_rows_into(buffer[self._next : self._next + first], source, rows[:first])
            if first < n:
                gather_rows_into(buffer[: n - first], source, rows[first:])
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def _slots_oldest_first(self) -> torch.Tensor:
        start = self._next if self.is_full else 0
        return (start + torch.arange(self._size, device=self._images.device)) % self.capacity

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of all entries, oldest first."""
        if self._size == 0:
            raise RuntimeError("the context bank is empty")
        slots = self._slots_oldest_first()
        return gather_rows(self._images, slots), gather_rows(self._masks, slots)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` (image, mask) pairs in random order, reproducible under ``generator``.

        For ``n <= len`` they are the first ``n`` of a random permutation
        (distinct entries, the release's behaviour with V = B); for ``n > len``
        they are drawn uniformly with replacement, since no permutation is long enough.
        """
        if self._size == 0:
            raise RuntimeError("cannot draw from an empty context bank")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if n <= self._size:
            slots = torch.randperm(self._size, generator=generator, device=gen_device)[:n]
        else:
            slots = torch.randint(self._size, (n,), generator=generator, device=gen_device)
        slots = slots.to(self._images.device)
        return gather_rows(self._images, slots), gather_rows(self._masks, slots)

    def state_dict(self) -> dict:
        """Everything needed to restore the bank exactly (tensors are copies, safe to keep across pushes)."""
        return {
            "capacity": self.capacity,
            "next": self._next,
            "size": self._size,
            "images": None if self._images is None else self._images.clone(),
            "masks": None if self._masks is None else self._masks.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint bank capacity {state['capacity']} != this bank's {self.capacity}")
        self._next, self._size = int(state["next"]), int(state["size"])
        if state["images"] is None:
            self._images = self._masks = None
            return
        device = self.device if self.device is not None else state["images"].device
        self._images = state["images"].to(device, copy=True)
        self._masks = state["masks"].to(device, copy=True)
