"""Which embedded model segments a user's annotated images best: the one to fine-tune.

Fine-tuning carries furthest from the model closest to the images: phase-contrast cells
start from ``cells`` (held-out AP50 0.89 before any training) rather than from ``nuclei``
(0.002). Each embedded model segments a few of the annotated planes, and the one whose
objects match the annotations best is chosen. The annotations are the judge, not how
sure a model is of itself: ``em-neurites`` is sure of a small image of nuclei, and finds
cells where there are none.

Gray images are also judged with inverted contrast: brightfield nuclei are dark on a
bright background, and ``nuclei`` reads them inverted as it reads fluorescence (75
held-out DSB2018 images made dark on bright: AP50 0.865 read inverted; the best model
reading them as they are, ``cells``, scored 0.380, and 0.703 after 3 minutes of
fine-tuning). A model chosen so records the inversion in its normalization, and every
model fine-tuned from it reads images the same way.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .annotation import labelled_planes_mask
from .bundle import Model
from .errors import ImageWarning
from .familiarity import HESITATION
from .metrics import PixelCounts, average_precision
from .normalize import is_colour
from .predict import predict
from .registry import COLOUR_MODELS, embedded_models, load_model
from .targets import as_instance_labels

__all__ = ["CLOSEST", "JUDGED_PLANES", "ModelChoice", "closest_embedded_model"]

#: The name that asks for :func:`closest_embedded_model` (``train --init closest``).
CLOSEST = "closest"

#: Annotated planes each model segments to be judged: seconds per model on a CPU.
JUDGED_PLANES = 3


def _annotated_plane(image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None) -> tuple | None:
    """``(image plane, labels, mask)`` of the first plane of an image or stack with an annotated object (None: none has).

    A plane without objects would favour the model that finds nothing.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    stack = labels.reshape(-1, *labels.shape[-2:])
    if mask is not None:
        masks = np.asarray(mask, bool).reshape(stack.shape)
    else:  # as training reads them: a plane counts whole, a stack's planes that hold labels
        masks = labelled_planes_mask(stack) if len(stack) > 1 else np.ones(stack.shape, bool)
    annotated = np.flatnonzero(((stack > 0) & masks).any(axis=(1, 2)))
    if annotated.size == 0:
        return None
    if labels.ndim == 2:
        return image, labels, masks[0]
    index = int(annotated[0])
    colour = is_colour(image, 1)
    planes = image.reshape(-1, *image.shape[-3:]) if colour else image.reshape(-1, *image.shape[-2:])
    return planes[index], stack[index], masks[index]


@dataclass(frozen=True)
class ModelChoice:
    """An embedded model, and whether it reads the images with inverted contrast.

    Args:
        name: The embedded model's name.
        inverted: Whether the images are inverted before it reads them.
    """

    name: str
    inverted: bool = False

    def model(self) -> Model:
        """The embedded model, its normalization inverted if chosen so.

        An inverted model is named for it, and keeps none of the figures measured on
        images read as they are, but for its hesitation, which the unfamiliar-image check
        needs.
        """
        model = load_model(self.name)
        if self.inverted:
            model = model.copy()
            model.normalization = dataclasses.replace(model.normalization, invert=True)
            model.name = f"{self.name} (contrast inverted)"
            model.evaluation = {key: value for key, value in model.evaluation.items() if key == HESITATION}
        return model

    def __str__(self) -> str:
        return f"{self.name}, reading the images with inverted contrast" if self.inverted else self.name


def closest_embedded_model(annotated: Sequence[tuple], device: str | torch.device = "auto",
                           amp: bool = True) -> ModelChoice:
    """The embedded model whose predictions match the annotations best.

    Args:
        annotated: ``(image, labels, mask)`` of the user's annotated images (mask None:
            the whole image, or the planes of a stack that hold labels); the first
            annotated plane of each of the first :data:`JUDGED_PLANES` is segmented.
        device: Where the models predict.
        amp: Mixed precision, as for :func:`~napari_unet.core.predict.predict_iter`.

    Returns:
        The model, read as the images are or inverted (gray images only), with the
        highest mean AP at IoU 0.5 on those planes (inside their annotated areas), then
        the highest pixel IoU; of equal scores, the model reading the images as they are.
    """
    planes = [plane for plane in (_annotated_plane(*sample) for sample in annotated) if plane is not None]
    planes = planes[:JUDGED_PLANES]
    gray = not any(is_colour(image, 1) for image, _, _ in planes)
    # A colour model (nuclei-he) is judged as part of the model that hands it colour images.
    names = [name for name in embedded_models() if name not in COLOUR_MODELS.values()]
    choices = [ModelChoice(name, inverted) for inverted in ((False, True) if gray else (False,)) for name in names]
    scores = {choice: _score(choice.model(), planes, device, amp) for choice in choices}
    return max(scores, key=scores.__getitem__)  # the first of equals: not inverted


def _score(model: Model, planes: list[tuple], device, amp: bool) -> tuple[float, float]:
    """``(mean AP50, pixel IoU)`` of ``model``'s predictions of ``(image, labels, mask)`` planes."""
    ap50, pixels = [], PixelCounts()
    for image, labels, mask in planes:
        # Models are tried on images unlike theirs on purpose (colour to a gray model);
        # training says what concerns the model it trains.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageWarning)
            predicted = predict(model.for_image(image), image, device=device, amp=amp).labels * mask
        truth = as_instance_labels(labels) * mask
        ap50.append(average_precision([truth], [predicted], thresholds=(0.5,))["ap_mean"][0])
        pixels.add(predicted, truth, mask)
    return float(np.mean(ap50)) if ap50 else 0.0, pixels.scores()["iou"]
