"""How the pages of an input (a TIFF file's, or an array's planes) become the units a model predicts.

A unit is one output plane: one page, the pages of one plane across a channel axis for a
model that takes several channels, or one channel of a multi-channel input. The batch
engine (:mod:`~napari_unet.core.batch`) reads and writes files by these plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["UnitPlan", "plan_units"]


@dataclass(frozen=True)
class UnitPlan:
    """How the pages (or planes) of an input make the units that are predicted.

    A unit is one page; for a model that takes several channels from separate pages, the
    pages of one plane across the channel axis; or one channel chosen of a multi-channel
    input. Its result is one output page.
    """

    leading_shape: tuple[int, ...]
    channel_leading_axis: int | None  # leading axis whose pages are one unit's channels
    unit_channel_axis: int | None  # channel axis within a unit, as predict_iter takes it
    out_leading_shape: tuple[int, ...]
    out_axes: str
    channel: int | None = None  # the one channel taken (of the channel axis or the pages' samples)

    @property
    def units(self) -> int:
        return math.prod(self.out_leading_shape)

    def page_indices(self, unit: int) -> list[int]:
        """The input pages of unit ``unit``, in channel order."""
        index = list(np.unravel_index(unit, self.out_leading_shape)) if self.out_leading_shape else []
        if self.channel_leading_axis is None:
            return [int(np.ravel_multi_index(index, self.leading_shape))] if index else [0]
        pages = []
        channels = range(self.leading_shape[self.channel_leading_axis]) if self.channel is None else [self.channel]
        for channel in channels:
            full = index[: self.channel_leading_axis] + [channel] + index[self.channel_leading_axis :]
            pages.append(int(np.ravel_multi_index(full, self.leading_shape)))
        return pages

    def pixels(self, pages: list[np.ndarray]) -> tuple[np.ndarray, int | None]:
        """A unit's pixels and channel axis, from its pages (:meth:`page_indices`)."""
        if self.channel is not None and self.channel_leading_axis is None:  # one of the pages' samples
            return np.take(pages[0], self.channel, axis=self.unit_channel_axis), None
        return (pages[0] if len(pages) == 1 else np.stack(pages)), self.unit_channel_axis


def plan_units(name: str, axes: str, leading_shape: tuple[int, ...], page_axes: str, page_shape: tuple[int, ...],
                in_channels: int, channel_axis: int | None = None, channel: int | None = None) -> UnitPlan:
    """Plan the units of an input whose pages have ``page_axes`` (YX, YXS or SYX).

    Args:
        name: The input, for messages.
        axes: Axes of the whole input (leading axes, then the page's).
        leading_shape: Shape of the axes that index pages.
        page_axes: Axes of one page.
        page_shape: Shape of one page.
        in_channels: Channels the model takes.
        channel_axis: Leading axis holding the channels, if the caller knows it.
        channel: For a one-channel model, the channel to segment (0 the first) of an
            input with a C axis or colour samples; an input without either is taken as
            it is. None: every channel is segmented, one after the other.

    Raises:
        InputError: If the input's channels cannot be given to the model.
    """
    if page_axes not in ("YX", "YXS", "SYX"):
        raise InputError(f"{name}: pages with axes {page_axes} are not supported (need YX, or RGB samples)")
    leading_axes = axes[: len(leading_shape)]
    if channel is not None and in_channels == 1 and ("S" in page_axes or "C" in leading_axes):
        return _one_channel_plan(name, leading_axes, leading_shape, page_axes, page_shape, channel)
    if "S" in page_axes:
        # Colour or extra samples: the model's channels (RGB goes to gray for a one-channel model).
        unit_channel_axis, channel_axis = page_axes.index("S") - len(page_axes), None
    elif in_channels == 1 and channel_axis is None:
        unit_channel_axis = None
    else:
        if channel_axis is None:
            named = [leading_axes.index("C")] if "C" in leading_axes else []
            sized = [axis for axis, length in enumerate(leading_shape) if length == in_channels]
            # An axis called C of the right length, else the first axis of the right length.
            candidates = [axis for axis in named if leading_shape[axis] == in_channels] or sized
            if not candidates:
                raise InputError(f"{name}: the model takes {in_channels} channels but no axis of its shape "
                                 f"{leading_shape + page_shape} (axes {axes}) has that length")
            channel_axis = candidates[0]
        if not 0 <= channel_axis < len(leading_shape):
            if not leading_shape:
                raise InputError(f"{name}: channel axis {channel_axis}, but it has no axis besides height and width")
            named = "" if set(leading_axes) == {"Q"} else f", {leading_axes}"  # arrays' axes have no names
            raise InputError(f"{name}: channel axis {channel_axis} is not one of its axes before height and width "
                             f"(0 to {len(leading_shape) - 1}{named})")
        unit_channel_axis = 0
    out_leading = tuple(length for axis, length in enumerate(leading_shape) if axis != channel_axis)
    out_axes = "".join(letter for axis, letter in enumerate(leading_axes) if axis != channel_axis)
    return UnitPlan(tuple(leading_shape), channel_axis, unit_channel_axis, out_leading, out_axes + "YX")


def _one_channel_plan(name: str, leading_axes: str, leading_shape: tuple[int, ...], page_axes: str,
                      page_shape: tuple[int, ...], channel: int) -> UnitPlan:
    """The units of one channel of an input with colour samples or a C axis."""
    if "S" in page_axes:
        count = page_shape[page_axes.index("S")]
        plan = UnitPlan(leading_shape, None, page_axes.index("S") - len(page_axes), leading_shape,
                         leading_axes + "YX", channel)
    else:
        axis = leading_axes.index("C")
        count = leading_shape[axis]
        out_leading = tuple(length for index, length in enumerate(leading_shape) if index != axis)
        plan = UnitPlan(leading_shape, axis, None, out_leading, leading_axes.replace("C", "") + "YX", channel)
    if not 0 <= channel < count:
        raise InputError(f"{name} has {count} channels (0 to {count - 1}); channel {channel} is not one of them")
    return plan
