"""How a run predicts its images and makes their labels: one frozen, checked set of settings.

A run (one image, a stack, a batch of files, an array) takes one :class:`PredictionSettings`,
checked when it is made. The facts of each input, its objects' diameter, pixel size and
z step, are not settings: they go with the input (see :mod:`~napari_unet.core.batch`).
The command line and the widgets take their defaults from :data:`DEFAULT_SETTINGS`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Any

from .defaults import MIN_OBJECT_SIZE
from .errors import InputError

#: How a volume labelled in 3D can be seen (see ``PredictionSettings.views``).
VIEWS = ("auto", "xy", "xyz")

__all__ = ["PredictionSettings", "DEFAULT_SETTINGS", "VIEWS"]


@dataclass(frozen=True)
class PredictionSettings:
    """Settings of a prediction run, checked when made.

    Attributes:
        tile_size: Largest tile edge in pixels, context included (None: 1024 on a GPU,
            up to 2048 on a CPU as memory allows). Sizes under the network's smallest
            tile are raised to it, with a warning, when the settings meet their model
            (:func:`~napari_unet.core.predict.settled_for`).
        batch_size: Most tiles per forward pass (None: 1 on a CPU, 4 on a GPU).
        threshold: Probability threshold of the post-processing (see
            :func:`~napari_unet.core.postprocess.probabilities_to_labels`); None: the
            threshold of the model that segments the image, chosen on its validation images.
        min_size: Smallest object kept, in pixels.
        device: Torch device or "auto".
        amp: Mixed precision where the device is faster with it: float16 on CUDA, bfloat16
            on a CPU with AMX (:func:`~napari_unet.core.device.mixed_precision_dtype`);
            False: float32.
        compile_network: Compile the network with ``torch.compile`` before the first
            plane: about 8 % faster on 1024x1024 planes on a CPU after 10 to 25 seconds
            of compiling per tile shape, so for long stacks and batches of same-sized images.
        test_time_augmentation: Average the probabilities of the plane's eight
            orientations (quarter turns, each also mirrored), as the U-Net paper averaged
            rotated versions of its input: more accurate outlines for eight times the
            network's work.
        intensity_range: Intensities ``(low, high)`` mapped to 0 and 1 in every plane,
            instead of each plane's own percentiles (the model's normalization): for
            stacks whose planes must keep their relative brightness, so that an empty or
            out-of-focus plane is not stretched until its noise looks like objects (see
            :class:`~napari_unet.core.normalize.IntensityRange`). Choose it so that the
            objects span about the range, as napari's contrast limits do.
        views: How a volume labelled in 3D is seen (:mod:`~napari_unet.core.views`):
            ``"xy"`` through its planes alone; ``"xyz"`` through its planes and its XZ
            and YZ side views, averaged (about ``1 + 2 * z_scale`` times the network's
            work, and the volume labelled whole); ``"auto"``: the three views where the
            volume is labelled whole, its planes alone where it is labelled in chunks.

    Raises:
        InputError: If a size is not positive, the smallest object size is negative, the
            threshold is not a probability, the intensity range is not two numbers, the
            lower first, or the views are none of ``"auto"``, ``"xy"`` and ``"xyz"``.
    """

    tile_size: int | None = None
    batch_size: int | None = None
    threshold: float | None = None
    min_size: int = MIN_OBJECT_SIZE
    device: Any = "auto"
    amp: bool = True
    compile_network: bool = False
    test_time_augmentation: bool = False
    intensity_range: tuple[float, float] | None = None
    views: str = "auto"

    def __post_init__(self):
        for name in ("tile_size", "batch_size"):
            size = _whole_number(getattr(self, name))
            if size is not None and size < 1:
                raise InputError(f"tile size and batch size must be positive whole numbers, not {getattr(self, name)!r}")
            object.__setattr__(self, name, size)
        min_size = _whole_number(self.min_size)
        if min_size is None or min_size < 0:
            raise InputError(f"the smallest object size is a number of pixels, 0 or more, not {self.min_size!r}")
        object.__setattr__(self, "min_size", min_size)
        for switch in ("amp", "compile_network", "test_time_augmentation"):
            object.__setattr__(self, switch, bool(getattr(self, switch)))
        if self.threshold is not None:
            try:
                threshold = float(self.threshold)
            except (TypeError, ValueError):
                threshold = math.nan
            if not 0 <= threshold <= 1:
                raise InputError(f"the threshold is a probability, between 0 and 1, not {self.threshold!r}")
            object.__setattr__(self, "threshold", threshold)
        if self.intensity_range is not None:
            # numpy only when a range is given: the command line reads the defaults above
            # without importing it.
            from .normalize import IntensityRange

            checked = IntensityRange.of(self.intensity_range)
            object.__setattr__(self, "intensity_range", (checked.low, checked.high))
        if self.views not in VIEWS:
            raise InputError(f"a volume's views are {', '.join(map(repr, VIEWS))}, not {self.views!r}")

    @classmethod
    def of(cls, settings: PredictionSettings | None = None, **options) -> PredictionSettings:
        """``settings`` (None: the defaults) with the ``options`` given as keywords instead.

        Raises:
            TypeError: For an option that is not a field of these settings.
            InputError: As the settings themselves.
        """
        unknown = sorted(set(options) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown prediction option(s) {', '.join(map(repr, unknown))}; the options are "
                            f"{', '.join(field.name for field in dataclasses.fields(cls))}")
        return dataclasses.replace(settings or DEFAULT_SETTINGS, **options)

    def replace(self, **changes) -> PredictionSettings:
        """These settings with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

    def recorded(self) -> dict:
        """The settings that decide the labels, as an output's note records them (JSON types).

        Not the tiling, which gives the same labels, nor the device and its precision,
        which move only a few outlines.
        """
        return {
            "threshold": self.threshold,
            "min_size": self.min_size,
            "test_time_augmentation": self.test_time_augmentation,
            "intensity_range": None if self.intensity_range is None else list(self.intensity_range),
            "views": self.views,
        }


def _whole_number(value) -> int | None:
    """``value`` as an int (None stays None); -1 for what is no whole number, which every check refuses."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        return -1


#: The settings of a run that changes none.
DEFAULT_SETTINGS = PredictionSettings()
