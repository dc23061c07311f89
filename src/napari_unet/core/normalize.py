"""Intensity normalization and channel handling, shared by training and prediction.

The normalization is part of the model file, so an image is scaled the same way when a
model is trained and when it predicts, whatever the input's dtype (uint8, uint16, float).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ImageWarning, InputError

__all__ = ["COLOUR_CONVERSIONS", "IntensityRange", "Normalization", "as_planes", "haematoxylin", "is_colour",
           "normalization_for"]

#: How a one-channel model reads a colour (RGB) image: its luminance, or the haematoxylin
#: stain of a colour deconvolution (nuclei bright on dark in H&E and other haematoxylin stains).
COLOUR_CONVERSIONS = ("luminance", "haematoxylin")


@dataclass(frozen=True)
class Normalization:
    """Robust percentile normalization of each image plane and channel to about [0, 1].

    Args:
        low_percentile: Percentile mapped to 0.
        high_percentile: Percentile mapped to 1.
        colour: How a one-channel model reads an RGB image, one of
            :data:`COLOUR_CONVERSIONS`: ``"luminance"`` (gray, with a warning, since the
            model was not made for colour) or ``"haematoxylin"`` (the model reads stained
            tissue).
        invert: Whether the scaled intensities are inverted (``1 - x``), so that a model
            of bright objects on a dark background reads dark objects on a bright one
            (brightfield nuclei) as it reads fluorescence.
    """

    low_percentile: float = 1.0
    high_percentile: float = 99.8
    colour: str = "luminance"
    invert: bool = False

    def __post_init__(self):
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError("need 0 <= low_percentile < high_percentile <= 100")
        if self.colour not in COLOUR_CONVERSIONS:
            raise ValueError(f"colour must be one of {', '.join(COLOUR_CONVERSIONS)}, not {self.colour!r}")
        if not isinstance(self.invert, bool):
            raise ValueError(f"invert is true or false, not {self.invert!r}")

    def to_dict(self) -> dict:
        values = asdict(self)
        if not self.invert:
            # Left out, so that earlier versions of napari-unet still read the file: they
            # know no inversion, and read a model that inverts as damaged rather than wrongly.
            del values["invert"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Normalization:
        return cls(**values)

    def range_of(self, values) -> tuple[float, float]:
        """The intensities at this normalization's percentiles over all of ``values`` (finite ones only).

        One range for a whole z-stack keeps the planes at its ends, which hold little but
        haze, as dark as they are, where each plane's own percentiles would stretch them
        until the haze looks like objects.

        Args:
            values: An array, or a stack whose planes are read as it is iterated
                (:class:`~napari_unet.core.tiffstream.TiffPlanes`): counted plane by
                plane, never held whole.

        Raises:
            InputError: If no value is finite.
        """
        percentiles = (self.low_percentile, self.high_percentile)
        if values.dtype in (np.uint8, np.uint16):
            low, high = _integer_percentiles(values if isinstance(values, np.ndarray) else iter(values), percentiles)
        else:
            # Other types as float32, as each plane's percentiles take them, and an array as
            # a stack read plane by plane is: one function, the same range.
            low, high = _float_percentiles([values] if isinstance(values, np.ndarray) else values, percentiles)
        # A flat stack stays flat, as a flat plane does, instead of an empty range.
        return low, max(high, low + 1.0)

    def _percentiles(self, values: np.ndarray, warn: bool) -> tuple[float, float, np.ndarray | None]:
        """The intensities at this normalization's percentiles of uint8, uint16 or float32 ``values``.

        Returns:
            ``(low, high, non_finite)``: ``non_finite`` marks the NaN and infinite values,
            left out of the percentiles (None where there are none).
        """
        if values.dtype in (np.uint8, np.uint16):
            # Counting the values gives the same percentiles as sorting them, several
            # times faster: the usual 8 and 16 bit microscopy images need no sort.
            low, high = _integer_percentiles(values, (self.low_percentile, self.high_percentile))
            return low, high, None
        non_finite = _non_finite(values, warn=warn)
        finite = values if non_finite is None else values[~non_finite]
        low, high = np.percentile(finite, [self.low_percentile, self.high_percentile])
        return float(low), float(high), non_finite

    def __call__(self, planes: np.ndarray) -> np.ndarray:
        """Normalize ``(..., channels, height, width)`` planes to float32, one plane at a time.

        Non-finite pixels (NaN, inf) are ignored for the percentiles and set to 0, with a
        warning.
        """
        planes = np.asarray(planes)
        out = np.empty(planes.shape, np.float32)
        flat_in = planes.reshape(-1, *planes.shape[-2:])
        flat_out = out.reshape(flat_in.shape)
        warned = False
        for index, plane in enumerate(flat_in):
            plane = _as_scaled_type(plane)
            low, high, non_finite = self._percentiles(plane, warn=not warned)
            warned = warned or non_finite is not None
            _scale(plane, low, high, flat_out[index], self.invert)
            if non_finite is not None:
                flat_out[index][non_finite] = 0.0
        return out


@dataclass(frozen=True)
class IntensityRange:
    """One intensity range mapped to [0, 1] in every plane, instead of each plane's percentiles.

    Percentiles stretch every plane to full contrast, which is what makes a model see the
    same objects at any brightness, but also stretches a plane without objects (an empty
    field of a screen, the out-of-focus ends of a z-stack) until its noise or haze looks
    like objects. With one range for all planes such planes stay as dark as they are.
    Non-finite pixels become 0, with a warning.

    Args:
        low: Intensity mapped to 0 (to 1 when inverted).
        high: Intensity mapped to 1 (to 0 when inverted).
        invert: Whether the scaled intensities are inverted, as the model's
            :class:`Normalization` says.
    """

    low: float
    high: float
    invert: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise InputError(f"an intensity range is two finite numbers (got {self.low:g} and {self.high:g})")
        if self.low == self.high:
            raise InputError(f"an intensity range needs a lower and a higher number (got {self.low:g} twice)")
        if self.low > self.high:
            raise InputError(f"an intensity range is two numbers, the lower first (got {self.low:g} and {self.high:g})")

    @classmethod
    def of(cls, pair, invert: bool = False) -> IntensityRange:
        """The range of a ``(low, high)`` pair as a user gives it.

        Raises:
            InputError: If ``pair`` is not two numbers, the lower first.
        """
        try:
            low, high = (float(value) for value in pair)
        except (TypeError, ValueError):
            raise InputError(f"an intensity range is two numbers, LOW HIGH, not {pair!r}") from None
        return cls(low, high, invert)

    def __call__(self, planes: np.ndarray) -> np.ndarray:
        """Scale ``(..., channels, height, width)`` planes to float32."""
        planes = np.asarray(planes)
        out = np.empty(planes.shape, np.float32)
        _scale(planes, self.low, self.high, out, self.invert)
        if planes.dtype.kind in "fc":
            non_finite = _non_finite(planes, warn=True)
            if non_finite is not None:
                out[non_finite] = 0.0
        return out


def normalization_for(normalization: Normalization,
                      intensity_range: tuple[float, float] | None) -> Normalization | IntensityRange:
    """How an image's intensities are scaled: a model's ``normalization``, or one fixed range.

    Training and prediction share it, so that a model fine-tuned on planes scaled by a
    range sees them as it will when predicting with that range. A range keeps the model's
    inversion: it replaces how intensities are scaled, not which way round the model reads them.

    Raises:
        InputError: If ``intensity_range`` is not two numbers, the lower first.
    """
    if intensity_range is None:
        return normalization
    return IntensityRange.of(intensity_range, normalization.invert)


def _non_finite(values: np.ndarray, warn: bool) -> np.ndarray | None:
    """Where ``values`` are NaN or infinite, or None where none is; those become background.

    Args:
        values: Pixels of a floating-point image.
        warn: Say, with a warning, that such pixels are treated as background.

    Raises:
        InputError: If no pixel is finite.
    """
    finite = np.isfinite(values)
    if finite.all():
        return None
    if not finite.any():
        raise InputError("the image has no finite pixel values (all NaN or inf)")
    if warn:
        warnings.warn("the image has NaN or infinite pixels; they are treated as background", ImageWarning, stacklevel=3)
    return ~finite


def _as_scaled_type(values: np.ndarray) -> np.ndarray:
    """uint8 and uint16 ``values`` as they are (their percentiles are counted), others as float32."""
    return values if values.dtype in (np.uint8, np.uint16) else values.astype(np.float32, copy=False)


def _scale(plane: np.ndarray, low: float, high: float, out: np.ndarray, invert: bool = False) -> None:
    """Map ``low`` to 0 and ``high`` to 1 (1 and 0 when ``invert``), writing float32 into ``out``."""
    if high <= low:  # a flat plane: keep it flat instead of dividing by zero
        high = low + 1.0
    if invert:
        np.subtract(np.float32(high), plane, out=out, dtype=np.float32)
    else:
        np.subtract(plane, np.float32(low), out=out, dtype=np.float32)
    out *= 1.0 / (high - low)


#: Values counted at once by :func:`_integer_percentiles`: ``np.bincount`` takes its input
#: as int64, 8 bytes a value, which for a whole 100 x 2048 x 2048 stack would be 3.4 GB.
_COUNTED_AT_ONCE = 2**22


def _integer_percentiles(values: np.ndarray | Iterator[np.ndarray], percentiles: tuple[float, ...]) -> list[float]:
    """``np.percentile`` (linear interpolation) of a uint8 or uint16 plane or stack, from its histogram.

    ``values`` may also come as planes, one after the other, all of one type.
    """
    counts = None
    for part in [values] if isinstance(values, np.ndarray) else values:
        part = part.reshape(-1)
        if counts is None:
            counts = np.zeros(np.iinfo(part.dtype).max + 1, np.int64)
        for start in range(0, part.size, _COUNTED_AT_ONCE):
            counts += np.bincount(part[start:start + _COUNTED_AT_ONCE], minlength=len(counts))
    cumulative = np.cumsum(counts)
    last = int(cumulative[-1]) - 1
    results = []
    for percentile in percentiles:
        position = last * percentile / 100
        below = math.floor(position)
        # The k-th smallest value (0-based) is the first whose cumulative count exceeds k.
        lower, upper = np.searchsorted(cumulative, [below, min(below + 1, last)], side="right")
        results.append(float(lower + (upper - lower) * (position - below)))
    return results


def _float_percentiles(stack: Iterable[np.ndarray], percentiles: tuple[float, ...]) -> list[float]:
    """``np.percentile`` (linear interpolation) of the finite values of a stack as float32, in two passes over its planes.

    Each finite float32 value has a 32-bit key in the order of the values: the first
    pass counts the keys' upper halves, which says where each order statistic lies; the
    second counts the lower halves of the keys there, which say the value itself. Exact,
    whatever the values, with two 65536-bin histograms in memory.

    Args:
        stack: Arrays (planes, or one array), iterable twice.
        percentiles: Percentiles to give.

    Raises:
        InputError: If no value is finite.
    """
    upper = np.zeros(_HALF_KEYS, np.int64)
    for keys in _sortable_keys(stack):
        upper += np.bincount(keys >> 16, minlength=_HALF_KEYS)
    cumulative_upper = np.cumsum(upper)
    count = int(cumulative_upper[-1])
    if count == 0:
        raise InputError("the image has no finite pixel values (all NaN or inf)")
    positions = [(count - 1) * percentile / 100 for percentile in percentiles]
    ranks = sorted({rank for position in positions for rank in (math.floor(position), min(math.floor(position) + 1,
                                                                                             count - 1))})
    bins = {rank: int(np.searchsorted(cumulative_upper, rank, side="right")) for rank in ranks}
    lower = {upper_half: np.zeros(_HALF_KEYS, np.int64) for upper_half in set(bins.values())}
    for keys in _sortable_keys(stack):
        for upper_half, counts in lower.items():
            counts += np.bincount(keys[(keys >> 16) == upper_half] & (_HALF_KEYS - 1), minlength=_HALF_KEYS)
    values = {}
    for rank, upper_half in bins.items():
        within = rank - (int(cumulative_upper[upper_half - 1]) if upper_half else 0)
        lower_half = int(np.searchsorted(np.cumsum(lower[upper_half]), within, side="right"))
        values[rank] = _value_of_key((upper_half << 16) | lower_half)
    results = []
    for position in positions:
        below = math.floor(position)
        low, high = values[below], values[min(below + 1, count - 1)]
        results.append(low + (high - low) * (position - below))
    return results


_HALF_KEYS = 2**16


def _sortable_keys(stack: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """uint32 keys of a stack's finite values as float32, in the values' order, a few million at a time."""
    for part in stack:
        part = np.asarray(part).reshape(-1)
        for start in range(0, part.size, _COUNTED_AT_ONCE):
            values = part[start:start + _COUNTED_AT_ONCE].astype(np.float32)
            bits = values[np.isfinite(values)].view(np.uint32)
            # Positive values after negative ones, in order: sign bit set on positives, all
            # bits flipped on negatives.
            yield np.where(bits >> 31, ~bits, bits | np.uint32(2**31)).astype(np.int64)


def _value_of_key(key: int) -> float:
    """The float32 value whose key (:func:`_sortable_keys`) is ``key``."""
    bits = key & (2**31 - 1) if key >> 31 else ~key & (2**32 - 1)
    return float(np.array(bits, np.uint32).view(np.float32))


def as_planes(
    image: np.ndarray, in_channels: int, channel_axis: int | None = None, colour: str = "luminance"
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Bring an image into the ``(planes, channels, height, width)`` layout of the network.

    The last two axes are always height and width. Without ``channel_axis``, a
    one-channel model reads every leading axis as a stack axis (Z, T, ...), except that a
    trailing axis of 3 or 4 on an image whose other axes are large is read as RGB(A) and
    converted to one channel as ``colour`` says; a multi-channel model takes the first axis
    of the right length as channels.

    Args:
        image: Array with at least two dimensions.
        in_channels: Channels the model takes.
        channel_axis: Axis holding the channels, if the caller knows it.
        colour: How a one-channel model reads RGB(A): ``"luminance"`` converts to gray
            with a warning, ``"haematoxylin"`` takes the haematoxylin stain (see
            :func:`haematoxylin`).

    Returns:
        The planes and the stack shape (the leading axes other than channels), so that
        results can be reshaped to ``stack_shape + (height, width)``.

    Raises:
        InputError: If the image has too few dimensions or its channels don't fit the model.
    """
    image = np.asarray(image)
    if image.ndim < 2 or min(image.shape[-2:]) < 1:
        raise InputError(f"an image needs at least two axes (height, width), got shape {image.shape}")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.number)) or np.iscomplexobj(image):
        raise InputError(f"cannot read pixel values of type {image.dtype}")
    if channel_axis is None and is_colour(image, 1):
        channel_axis = image.ndim - 1
    if channel_axis is not None:
        if image.ndim < 3:
            raise InputError("a channel axis needs an image of at least three axes")
        if not -image.ndim <= channel_axis < image.ndim:
            raise InputError(f"channel axis {channel_axis} does not exist in an image of shape {image.shape}")
        # The spatial axes are the last two axes other than the channel axis.
        channels = image.shape[channel_axis]
        image = np.moveaxis(image, channel_axis, -3)
        if channels != in_channels:
            if in_channels == 1 and channels in (3, 4) and colour == "haematoxylin":
                image = haematoxylin(image)
            elif in_channels == 1 and channels in (3, 4):
                warnings.warn(
                    f"the image has {channels} colour channels and the model takes one; "
                    "it was converted to gray (if they are planes of a stack, save the file as a "
                    "stack: tifffile writes 3 or 4 planes as RGB unless given photometric='minisblack')",
                    ImageWarning,
                    stacklevel=2,
                )
                image = _to_gray(image)
            else:
                raise InputError(
                    f"the image has {channels} channels but the model takes {in_channels}"
                )
    elif in_channels == 1:
        image = image[..., np.newaxis, :, :]
    else:
        axes = [axis for axis in range(image.ndim - 2) if image.shape[axis] == in_channels]
        if not axes:
            raise InputError(
                f"the model takes {in_channels} channels but no leading axis of the image "
                f"(shape {image.shape}) has that length; give the channel axis (channel_axis=-1 "
                f"for channels last)"
            )
        image = np.moveaxis(image, axes[0], -3)
    stack_shape = image.shape[:-3]
    return image.reshape(-1, *image.shape[-3:]), stack_shape


def is_colour(image, in_channels: int, channel_axis: int | None = None) -> bool:
    """Whether a one-channel model gets ``image`` as colour (RGB or RGBA), as :func:`as_planes` reads it.

    Only ``image.shape`` is looked at.
    """
    shape = tuple(np.shape(image))
    if in_channels != 1 or len(shape) < 3:
        return False
    if channel_axis is None:
        return shape[-1] in (3, 4) and min(shape[-3:-1]) > 4
    return -len(shape) <= channel_axis < len(shape) and shape[channel_axis] in (3, 4)


def _to_gray(image: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601) of ``(..., 3 or 4, H, W)``; alpha is dropped."""
    rgb = image[..., :3, :, :].astype(np.float32)
    gray = 0.299 * rgb[..., 0, :, :] + 0.587 * rgb[..., 1, :, :] + 0.114 * rgb[..., 2, :, :]
    return gray[..., np.newaxis, :, :]


# Optical densities of one unit of haematoxylin, eosin and DAB in red, green and blue
# (Ruifrok and Johnston, Anal. Quant. Cytol. Histol. 2001), the rows normalized; the
# inverse separates an image's optical density into the three stains.
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAINS /= np.linalg.norm(_STAINS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(_STAINS).astype(np.float32)


def haematoxylin(image: np.ndarray) -> np.ndarray:
    """The haematoxylin stain of ``(..., 3 or 4, H, W)`` RGB(A) planes, as one channel.

    Colour deconvolution (Ruifrok and Johnston 2001): the optical density of each pixel,
    ``-log10`` of its transmitted light, is split into haematoxylin, eosin and DAB. The
    haematoxylin density is bright where nuclei are, as in a fluorescence image of a DNA
    stain, whatever the eosin around them. Integer images are read against their type's
    largest value, float images against 1 when they fit it and their own maximum otherwise.

    Returns:
        float32 planes ``(..., 1, H, W)`` of haematoxylin optical density (0 or more).
    """
    rgb = np.asarray(image)[..., :3, :, :]
    if rgb.dtype.kind in "ui":
        white = float(np.iinfo(rgb.dtype).max)
    else:
        finite = rgb[np.isfinite(rgb)]
        white = max(float(finite.max()), 1.0) if finite.size else 1.0
    transmitted = np.clip(rgb.astype(np.float32) / np.float32(white), 1.0 / 255, 1.0)
    density = -np.log10(transmitted)
    stain = np.einsum("...chw,c->...hw", density, _UNMIX[:, 0])
    return np.maximum(stain, 0.0, out=stain)[..., np.newaxis, :, :]
