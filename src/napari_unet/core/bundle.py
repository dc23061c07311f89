"""A model as users handle it: network, normalization and what is known about its training.

A :class:`Model` is everything needed to reproduce a prediction, and is what a model file
holds (see :mod:`napari_unet.core.modelfile`): the GUI, the command line and scripts that
load the same file get the same result.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .errors import InputError
from .model import NetworkConfig, UNet
from .normalize import Normalization, is_colour

__all__ = ["Model"]


@dataclass
class Model:
    """A U-Net together with its preprocessing and training record.

    Args:
        network: The torch module (a :class:`~napari_unet.core.model.UNet`).
        normalization: Intensity normalization applied before the network.
        gap: Gap radius between touching objects in the training targets (two classes).
        threshold: Probability threshold of the post-processing that prediction uses
            unless told otherwise; training chooses it on the validation images.
        separation: How the post-processing tells touching objects apart, one of
            :data:`~napari_unet.core.postprocess.SEPARATIONS`; training chooses it on the
            validation images too.
        name: Short name (for embedded models, the name they are addressed by).
        description: One line for humans.
        pixel_size: Physical size of a pixel of the training data ``(y, x)``, if known.
        pixel_unit: Unit of ``pixel_size`` (for example "um").
        object_diameter: Median object diameter of the training data, in pixels.
        history: Training record: one dict per validation (step, loss, metrics, time).
        training: Settings of the last training run.
        training_data: Where the training images came from, for humans.
        evaluation: Figures measured on held-out images (metric name to value), with
            what they were measured on under "data".
        colour_model: The model that segments colour (RGB) images in this one's place,
            if there is one: the embedded ``nuclei`` reads fluorescence and hands
            stained tissue to ``nuclei-he``. Not saved with the model: a model file is
            one network.
    """

    network: UNet
    normalization: Normalization = field(default_factory=Normalization)
    gap: int = 1
    threshold: float = 0.5
    separation: str = "seeds"
    name: str = ""
    description: str = ""
    pixel_size: tuple[float, float] | None = None
    pixel_unit: str = ""
    object_diameter: float | None = None
    history: list[dict] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    training_data: str = ""
    evaluation: dict = field(default_factory=dict)
    colour_model: Model | None = None

    @classmethod
    def new(cls, config: NetworkConfig | None = None, **kwargs) -> Model:
        """A freshly initialized (untrained) model."""
        return cls(network=UNet(config or NetworkConfig()), **kwargs)

    @property
    def config(self) -> NetworkConfig:
        return self.network.config

    def for_image(self, image, channel_axis: int | None = None) -> Model:
        """The model that segments ``image``: its colour model for a colour image, else this one.

        Only the shape is looked at, so a lazy (Dask, Zarr) image is not read.
        """
        return self.for_colours([is_colour(image, self.config.in_channels, channel_axis)])

    def for_colours(self, colours) -> Model:
        """The model that segments images of which ``colours`` says, for each, whether it is in colour.

        Raises:
            InputError: If some are in colour and others not, and this model hands colour
                images to another model.
        """
        if self.colour_model is None:
            return self  # without looking at them: a batch's files need not be opened
        kinds = set(colours)
        if len(kinds) > 1:
            raise InputError(f"{self.name or 'this model'} segments gray images itself and colour images with "
                             f"{self.colour_model.name or 'another model'}: give the colour and gray images apart")
        return self.colour_model if kinds == {True} else self

    def copy(self) -> Model:
        """A deep copy whose weights can be trained without touching this model."""
        return copy.deepcopy(self)

    def predict(self, image, **kwargs):
        """Predict labels and foreground probability; see :func:`napari_unet.core.predict.predict`."""
        from .predict import predict

        return predict(self, image, **kwargs)

    def save(self, path):
        """Save atomically to ``path`` and return the path written; see :func:`~napari_unet.core.modelfile.save_model`."""
        from .modelfile import save_model

        return save_model(self, path)
