"""Stacks read a plane at a time: lazy arrays (Dask, Zarr, memory maps) given to prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.planes import ArrayPlanes
from napari_unet.core.predict import predict
from napari_unet.core.registry import load_model
from napari_unet.core.synthetic import synthetic_nuclei


class _ReadByPlane:
    """An array-like that gives what is indexed and refuses to be read whole, as a lazy array of a large file."""

    def __init__(self, array: np.ndarray):
        self._array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self._array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was read")


def _stack(depth: int = 6) -> np.ndarray:
    image, truth = synthetic_nuclei((96, 96), count=10, seed=3)
    stack = np.stack([image] * depth)
    stack[0][truth % 2 == 1] = np.median(image[truth == 0])  # odd nuclei start at the second plane
    return stack


@pytest.fixture(scope="module")
def nuclei_model():
    return load_model("nuclei")


@pytest.mark.parametrize("volume", [False, True])
def test_a_lazy_stack_is_predicted_a_plane_at_a_time_into_the_labels_of_the_array(nuclei_model, volume):
    stack = _stack()
    lazy = _ReadByPlane(stack)
    expected = predict(nuclei_model, stack, device="cpu", volume=volume, z_scale=2.0)
    given = predict(nuclei_model, lazy, device="cpu", volume=volume, z_scale=2.0)
    np.testing.assert_array_equal(given.labels, expected.labels)
    np.testing.assert_array_equal(given.probability, expected.probability)
    assert lazy.reads and all(isinstance(key, tuple) and len(key) == 1 for key in lazy.reads)  # one plane a read


def test_a_dask_time_lapse_of_z_stacks_is_read_by_plane_with_its_axes(nuclei_model):
    da = pytest.importorskip("dask.array")
    stack = np.stack([_stack(), _stack()[::-1]])  # T, Z, Y, X
    lazy = da.from_array(stack, chunks=(1, 1, 96, 96))
    planes = ArrayPlanes(lazy)
    assert planes.shape == (12, 1, 96, 96) and planes.stack_shape == (2, 6) and planes.dtype == stack.dtype
    np.testing.assert_array_equal(planes[7], stack[1, 1][np.newaxis])
    run = planes[2:9]
    assert isinstance(run, ArrayPlanes) and run.stack_shape == (7,)
    np.testing.assert_array_equal(run[1:3, :, 5:9, 10:20], stack.reshape(12, 1, 96, 96)[3:5, :, 5:9, 10:20])
    labels = predict(nuclei_model, lazy, device="cpu", volume=True, z_scale=2.0).labels
    np.testing.assert_array_equal(labels, predict(nuclei_model, stack, device="cpu", volume=True, z_scale=2.0).labels)


def test_colour_and_numpy_images_are_not_read_by_plane():
    rgb = _ReadByPlane(np.zeros((2, 32, 32, 3), np.uint8))
    assert not ArrayPlanes.reads(rgb, 1)  # a colour image goes through as_planes, whole
    assert not ArrayPlanes.reads(np.zeros((3, 8, 8)), 1)
    assert not ArrayPlanes.reads(_ReadByPlane(np.zeros((8, 8))), 1)  # a single plane is read anyway
    assert not ArrayPlanes.reads(_ReadByPlane(np.zeros((3, 8, 8))), 1, channel_axis=0)
    assert not ArrayPlanes.reads(torch.zeros((3, 8, 8)), 1)  # torch's types are no numpy type
    assert ArrayPlanes.reads(_ReadByPlane(np.zeros((3, 8, 8), np.float32)), 1)
