"""`--limit N`: a seeded subset of N images in which the classes take turns, so that every class is kept."""

from __future__ import annotations

from typing import Any

import numpy as np

RULE = "class-balanced"  # recorded beside the limit: classes take turns, drawn at random within each class


def balanced_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of `limit` items (all when limit is None or not below N), classes taking turns.

    labels: (N,) class indices, or (N, C) multilabel with 1 marking a present
    class (an image counts for each class it shows), or (N, 0) with no classes.
    In a seeded random order of the classes, each class in turn takes its next
    not yet chosen image, in a seeded random order within the class; classes
    that run out drop out, and images of no class fill what is left at random.
    A multiclass subset thus holds floor(N/C) or ceil(N/C) images per class
    wherever the class has them.
    """
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(members) for members in _members(labels)]
    queues = [queues[c] for c in rng.permutation(len(queues))]
    heads = [0] * len(queues)
    chosen = np.zeros(n, dtype=bool)
    taken = 0
    while taken < limit:
        before = taken
        for q, queue in enumerate(queues):
            while heads[q] < len(queue) and chosen[queue[heads[q]]]:
                heads[q] += 1
            if heads[q] < len(queue) and taken < limit:
                chosen[queue[heads[q]]] = True
                taken += 1
        if taken == before:  # every class ran out: images of no class fill the rest at random
            rest = rng.permutation(np.flatnonzero(~chosen))
            chosen[rest[:limit - taken]] = True
            break
    return np.flatnonzero(chosen)


def _members(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of the images of each class present in `labels`."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        return [group for group in np.split(order, bounds) if len(group)]
    return [members for members in (np.flatnonzero(labels[:, c] == 1) for c in range(labels.shape[1]))
            if len(members)]


def describe_subset(limit: int | None, seed: int) -> dict[str, Any]:
    """What a record stores about the subset: the limit, and when there is one, the rule and its seed."""
    return {"limit": limit, **({"limit_rule": RULE, "limit_seed": seed} if limit is not None else {})}
