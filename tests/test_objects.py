"""Procedural objects: sizes, determinism, kinds and the object-level train / val / test split."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.objects import MAX_GRIP_M, MAX_SIZE_M, OBJECT_KINDS, make_object, object_split, split_indices
from models.geometry import inside_mesh


def test_every_kind_is_a_graspable_closed_object() -> None:
    seen = set()
    for index in range(len(OBJECT_KINDS) * 2):
        mesh, kind = make_object(index)
        seen.add(kind)
        extents = mesh.extents
        # Random rotations can grow the axis-aligned box by up to sqrt(3) over the object's own size.
        assert 0.015 <= extents.max() <= MAX_SIZE_M * np.sqrt(3), (kind, extents)
        assert extents.min() <= MAX_GRIP_M * np.sqrt(3), (kind, extents)
        np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)
        assert inside_mesh(mesh, np.zeros((1, 3)))[0] or mesh.volume > 0, kind
        assert mesh.volume > 1e-7, kind
    assert seen == set(OBJECT_KINDS)


def test_objects_are_deterministic_and_distinct() -> None:
    first, kind = make_object(37)
    again, kind_again = make_object(37)
    other, _ = make_object(37 + len(OBJECT_KINDS))
    assert kind == kind_again
    np.testing.assert_array_equal(first.vertices, again.vertices)
    assert first.vertices.shape != other.vertices.shape or not np.allclose(first.vertices, other.vertices)


def test_splits_are_disjoint_and_sized() -> None:
    splits = [object_split(i) for i in range(1000)]
    assert splits.count("train") == 800 and splits.count("val") == 100 and splits.count("test") == 100
    test = split_indices("test", 20)
    train = split_indices("train", 200)
    assert len(test) == 20 and not set(test) & set(train)
    assert all(object_split(i) == "test" for i in test)
    with pytest.raises(ValueError, match=r"^split:"):
        split_indices("holdout", 1)
