"""Tests of the generated nuclei images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.synthetic import synthetic_nuclei


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different objects that are 4-neighbours somewhere."""
    pairs = set()
    for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1])):
        where = (a > 0) & (b > 0) & (a != b)
        pairs.update(zip(np.minimum(a, b)[where].tolist(), np.maximum(a, b)[where].tolist()))
    return pairs


def test_same_seed_gives_the_same_image():
    image_a, labels_a = synthetic_nuclei((96, 80), count=12, seed=7)
    image_b, labels_b = synthetic_nuclei((96, 80), count=12, seed=7)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)


def test_different_seeds_give_different_images():
    image_a, labels_a = synthetic_nuclei((96, 80), count=12, seed=7)
    image_b, labels_b = synthetic_nuclei((96, 80), count=12, seed=8)
    assert not np.array_equal(labels_a, labels_b)
    assert not np.array_equal(image_a, image_b)


def test_shapes_and_dtypes(nuclei):
    image, labels = nuclei
    assert image.shape == labels.shape == (128, 128)
    assert image.dtype == np.uint16
    assert labels.dtype == np.int32
    image8, labels8 = synthetic_nuclei((40, 50), count=4, seed=0, dtype=np.uint8)
    assert image8.dtype == np.uint8 and image8.shape == (40, 50)
    assert labels8.shape == (40, 50)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_are_consecutive_connected_objects(seed):
    _, labels = synthetic_nuclei((128, 128), count=16, seed=seed)
    ids = np.unique(labels)
    assert ids[0] == 0 and len(ids) > 1
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    assert ids[-1] <= 16
    for index in ids[1:]:
        assert ndimage.label(labels == index)[1] == 1
        assert np.count_nonzero(labels == index) >= 10


def test_fixture_contains_touching_objects(nuclei):
    _, labels = nuclei
    assert touching_pairs(labels)


@pytest.mark.parametrize("seed", [3, 4])
def test_contains_touching_objects(seed):
    _, labels = synthetic_nuclei((128, 128), count=20, touching=0.8, seed=seed)
    assert len(touching_pairs(labels)) >= 2


def test_no_touching_share_places_nuclei_independently():
    _, labels = synthetic_nuclei((128, 128), count=6, touching=0.0, radius=(4.0, 5.0), seed=0)
    assert labels.max() >= 3


def test_nuclei_are_brighter_than_background(nuclei):
    image, labels = nuclei
    inside = image[labels > 0].astype(float).mean()
    outside = image[ndimage.distance_transform_edt(labels == 0) > 4].astype(float).mean()
    assert inside > 2 * outside
    assert image.max() > 0 and image.min() < image.max()


def test_uint8_image_uses_its_range():
    image, labels = synthetic_nuclei((96, 96), count=10, seed=2, dtype=np.uint8)
    assert image[labels > 0].mean() > 60
    assert image[labels == 0].mean() < image[labels > 0].mean() / 2
