"""Object-size normalization: bring images to the object size a model was trained on.

A U-Net learns objects at the size, in pixels, they had in its training data; nuclei
imaged at twice the magnification are twice as wide and no longer look like nuclei to
it. Every model records the median object diameter of its training data (and their pixel
size, when known). Given the diameter of the objects in new images, or their pixel size,
:func:`scale_factor` says how much to resize them so that objects match the model; the
image is resized before the network and its probabilities are resized back, so labels
always come out on the image's own pixel grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import Model
from .errors import InputError
from .targets import consecutive_labels
from .units import in_unit

__all__ = ["pixel_size_for_model", "scale_factor", "usable_diameter", "scaled_shape", "resize_plane", "resize_labels", "circle_diameters", "equivalent_diameters", "object_diameter", "widest_areas"]

#: Factors this close to 1 are not worth a resampling (and the blur it brings).
NEGLIGIBLE = 0.05
#: Resizing further than this loses the objects (or the memory).
LARGEST_FACTOR = 8.0


def pixel_size_for_model(model: Model, pixel_size: tuple[float, float] | None, unit: str | None
                         ) -> tuple[float, float] | None:
    """Images' pixel size, given in ``unit``, in the model's unit, for :func:`scale_factor`.

    Returns:
        None when the pixel size is unknown or the model records none to compare it with.

    Raises:
        InputError: If the unit cannot be converted to the model's.
    """
    if pixel_size is None or not model.pixel_size:
        return None
    converted = in_unit(pixel_size, unit, model.pixel_unit)
    if converted is None:
        raise InputError(f"the images' pixel size is in {unit} and the model's in {model.pixel_unit}; "
                         "give the objects' diameter in pixels instead")
    return converted


def scale_factor(
    model: Model,
    diameter: float | None = None,
    pixel_size: tuple[float, float] | None = None,
) -> float:
    """Factor by which to resize images so that their objects match the model's.

    Args:
        model: The model, whose ``object_diameter`` (pixels) and ``pixel_size`` describe
            its training data.
        diameter: Typical object diameter in the images, in pixels; wins over the pixel size.
        pixel_size: Pixel size ``(y, x)`` of the images, in the model's unit (isotropic
            in the plane: the mean of the two is used).

    Returns:
        1.0 when nothing is given (or the factor is within 5% of 1), else the factor:
        above 1 enlarges the image.

    Raises:
        InputError: If the model does not know what the value is compared with, or the
            factor is implausibly far from 1.
    """
    factor = 1.0
    if diameter is not None:
        if not diameter > 0:
            raise InputError(f"the object diameter must be a positive number of pixels, not {diameter}")
        if not model.object_diameter:
            raise InputError("this model does not record the object size it was trained on; leave the diameter unset")
        factor = model.object_diameter / diameter
    elif pixel_size is not None:
        if min(pixel_size) <= 0:
            raise InputError(f"the pixel size must be positive, not {tuple(pixel_size)}")
        if not model.pixel_size:
            raise InputError("this model does not record the pixel size of its training data; give a diameter instead")
        factor = float(np.mean(pixel_size)) / float(np.mean(model.pixel_size))
    if not 1 / LARGEST_FACTOR <= factor <= LARGEST_FACTOR:
        if diameter is not None:
            usable = (f"object diameters from {model.object_diameter / LARGEST_FACTOR:.3g} to "
                      f"{model.object_diameter * LARGEST_FACTOR:.3g} px")
            theirs = f"{model.object_diameter:.1f} px objects"
        else:
            size = float(np.mean(model.pixel_size))
            usable = (f"pixel sizes from {size / LARGEST_FACTOR:.3g} to {size * LARGEST_FACTOR:.3g} "
                      f"{model.pixel_unit or ''}".rstrip())
            theirs = f"{size:.3g} {model.pixel_unit or ''} pixels".replace("  ", " ")
        raise InputError(f"the images would have to be resized {factor:.3g}x to match the model's {theirs}; "
                         f"it takes {usable}: check the diameter or pixel size")
    return 1.0 if abs(factor - 1) < NEGLIGIBLE else factor


def usable_diameter(model: Model, diameter: float) -> bool:
    """Whether images with objects of ``diameter`` pixels can be rescaled to the model's object size."""
    return bool(model.object_diameter) and 1 / LARGEST_FACTOR <= model.object_diameter / diameter <= LARGEST_FACTOR


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """Height and width of a plane resized by ``factor`` (at least one pixel each)."""
    return tuple(max(1, int(round(side * factor))) for side in shape)


def resize_plane(plane: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> np.ndarray | torch.Tensor:
    """Resize a ``(channels, H, W)`` float plane to ``shape`` (bilinear, anti-aliased when shrinking).

    A tensor is resized on its device and stays a tensor; an array comes back as one.
    """
    if tuple(plane.shape[-2:]) == tuple(shape):
        return plane
    is_tensor = isinstance(plane, torch.Tensor)
    tensor = plane.float() if is_tensor else torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))
    shrinking = shape[0] < plane.shape[-2] or shape[1] < plane.shape[-1]
    resized = F.interpolate(tensor[None], size=tuple(shape), mode="bilinear", align_corners=False,
                            antialias=shrinking)[0]
    return resized if is_tensor else resized.numpy()


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a label (or mask) plane to ``shape`` by nearest neighbour, keeping its dtype."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def circle_diameters(areas: np.ndarray) -> np.ndarray:
    """Diameter (pixels) of the circle of each area (pixels)."""
    return np.sqrt(4 * np.asarray(areas) / math.pi)


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter (pixels) of the circle of each object's area, for every object in ``labels``."""
    numbered, _ = consecutive_labels(np.asarray(labels))  # any values: 2**40 must not size a table
    areas = np.bincount(numbered.ravel())[1:]  # numbered 1..n: every number has pixels
    return circle_diameters(areas)


def widest_areas(labels: np.ndarray) -> np.ndarray:
    """Each object's largest area in one plane of ``(Z, Y, X)`` labels, indexed by its label (0: background).

    An object's widest plane is its true width: the planes around it cut it off its middle.
    """
    widest = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    for plane in labels:
        np.maximum(widest, np.bincount(plane.ravel(), minlength=widest.size), out=widest)
    return widest


def object_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent diameter (pixels) of the objects in a label image; None without objects."""
    diameters = equivalent_diameters(labels)
    return float(np.median(diameters)) if diameters.size else None
