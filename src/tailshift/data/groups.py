"""Many / medium / few class groups, by training count or by class-index ranges."""
from __future__ import annotations

import numpy as np

from .arrays import DataError

GROUP_RULES = ("index", "count")
GROUP_NAMES = ("many", "med", "few")

#: The release's fixed class-index boundaries, by number of classes.
INDEX_BOUNDS = {10: (3, 7), 100: (36, 71), 1000: (390, 835)}


def class_groups(
    counts: np.ndarray,
    rule: str = "index",
    bounds: tuple[int, int] | None = None,
    many_above: int = 100,
    few_below: int = 20,
) -> dict[str, np.ndarray]:
    """Class indices of each group.

    count: many > many_above images, few < few_below, medium in between (the usual rule).
    index: [0, b1) many, [b1, b2) medium, [b2, C) few (the release's rule; bounds
           default to INDEX_BOUNDS for 10, 100 and 1000 classes).
    """
    counts = np.asarray(counts)
    num_classes = len(counts)
    classes = np.arange(num_classes)
    if rule == "count":
        return {
            "many": classes[counts > many_above],
            "med": classes[(counts <= many_above) & (counts >= few_below)],
            "few": classes[counts < few_below],
        }
    if rule == "index":
        if bounds is None:
            if num_classes not in INDEX_BOUNDS:
                raise DataError(
                    f"no default index bounds for {num_classes} classes (known: "
                    f"{sorted(INDEX_BOUNDS)}); set data.group_bounds=[b1,b2] or data.groups=count"
                )
            bounds = INDEX_BOUNDS[num_classes]
        b1, b2 = bounds
        if not 0 <= b1 <= b2 <= num_classes:
            raise DataError(f"data.group_bounds must satisfy 0 <= b1 <= b2 <= {num_classes} (the class count), "
                            f"got {list(bounds)}")
        return {"many": classes[:b1], "med": classes[b1:b2], "few": classes[b2:]}
    raise DataError(f"unknown group rule {rule!r}; known: {', '.join(GROUP_RULES)}")
