"""Whether an image looks like those a model was trained on, judged from the model's own output.

A model shown images unlike its training data (H&E tissue to a fluorescence model, phase
contrast or EM to a nuclei model) does not fail loudly: it hesitates over wide areas, or
it finds specks of texture where its objects would be. Both show in its output, so the
check costs no second network. On images of its own kind a model is sure of every pixel
but those at the edges of objects: the foreground probability of the embedded ``nuclei``
lies between 0.2 and 0.8 on at most 0.35 % of the pixels more than 3 pixels from an
object's edge, in its 80 held-out DSB2018 fluorescence images, and none of them is
flagged; 9 of 10 phase-contrast images, 9 of 10 H&E images made gray and 5 of 5 EM
slices are. Where few pixels hesitate but the objects found are far smaller than the
model's, they are texture: phase contrast gives hundreds of objects of about half the
diameter of ``nuclei``'s.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from .bundle import Model
from .registry import COLOUR_MODELS, embedded_models
from .scale import object_diameter

__all__ = ["HESITATION", "diffuse_uncertainty", "hesitation", "unfamiliar_image_message"]

#: Key of ``Model.evaluation`` under which training records :func:`hesitation`.
HESITATION = "hesitation"

#: Foreground probabilities a model hesitates between.
UNCERTAIN = (0.2, 0.8)
#: Pixels next to an edge, at the model's scale, where hesitation is normal.
EDGE_BAND = 3
#: Share of a plane hesitated over, away from edges, that no image of the model's kind reached.
DIFFUSE_LIMIT = 0.01
#: The same, with objects under :data:`TEXTURE_SCALE` of the model's diameter.
TEXTURE_LIMIT = 0.004
TEXTURE_SCALE = 0.6


def diffuse_uncertainty(probability: np.ndarray, band: int) -> float:
    """Share of a plane whose foreground probability lies in :data:`UNCERTAIN`, ``band`` pixels or more from an edge.

    Measured on every second pixel of each axis of planes of 256 pixels or more (a
    quarter of the work; the share is the same to a few thousandths).
    """
    probability = np.asarray(probability)
    if min(probability.shape) >= 256:
        probability, band = probability[::2, ::2], max(1, round(band / 2))
    inside = (probability > 0.5).view(np.uint8)
    # A pixel is near an edge where its window holds pixels inside and outside objects.
    window = 2 * band + 1
    highest = ndimage.maximum_filter1d(ndimage.maximum_filter1d(inside, window, axis=0), window, axis=1)
    lowest = ndimage.minimum_filter1d(ndimage.minimum_filter1d(inside, window, axis=0), window, axis=1)
    hesitant = (probability > UNCERTAIN[0]) & (probability < UNCERTAIN[1]) & (highest == lowest)
    return float(np.count_nonzero(hesitant)) / max(hesitant.size, 1)


def hesitation(probabilities: Iterable[np.ndarray]) -> float:
    """The largest :func:`diffuse_uncertainty` of a model's foreground probability over images of its own kind.

    Args:
        probabilities: Foreground probabilities of held-out planes, at the model's scale.
    """
    return max((diffuse_uncertainty(probability, EDGE_BAND) for probability in probabilities), default=0.0)


def unfamiliar_image_message(model: Model, labels: np.ndarray, probability: np.ndarray,
                             pixel_scale: float = 1.0) -> str | None:
    """What a user should read when ``model``'s output says the image is unlike its training data, else None.

    Args:
        model: The model that predicted; one that does not record its :data:`HESITATION`
            (trained without validation images, or never) is not judged.
        labels: The plane's labels.
        probability: The plane's foreground probability, on the same grid.
        pixel_scale: Pixels of this grid per pixel of the model's scale (1 / the scale
            factor the plane was predicted at).
    """
    if HESITATION not in model.evaluation:
        return None  # never measured on held-out images of its kind: nothing to compare with
    band = max(1, round(EDGE_BAND * pixel_scale))
    diffuse = diffuse_uncertainty(probability, band)
    # Some kinds of image are less clear-cut than fluorescence (H&E: 0.2 to 2 % of each
    # plane): the model is judged against twice what it hesitated over on its own
    # validation images.
    limit = max(DIFFUSE_LIMIT, 2 * model.evaluation[HESITATION])
    if diffuse >= limit:
        why = f"it is unsure of {diffuse:.1%} of the image, away from any object's edge"
    else:
        found = object_diameter(labels)
        expected = model.object_diameter * pixel_scale if model.object_diameter else None
        too_sure = diffuse < limit * TEXTURE_LIMIT / DIFFUSE_LIMIT
        if too_sure or not expected or (found is not None and found >= TEXTURE_SCALE * expected):
            return None
        why = ("it finds no object, yet hesitates" if found is None else
               f"the objects it finds are {found:.0f} pixels wide, where its own are {expected:.0f}: texture, "
               "not objects")
    name = model.name or "this model"
    what = model.description.split(", ")[0]  # what it segments, before how
    kind = f" ({what[0].lower()}{what[1:]})" if what else ""
    others = [other for other in embedded_models() if other not in (model.name, *COLOUR_MODELS.values())]
    choices = f" (embedded: {', '.join(others)})" if others else ""
    return (f"the image looks unlike the images {name} was trained on{kind}: {why}. Its labels are likely wrong: "
            f"choose a model made for such images{choices}, or fine-tune this one on a few annotated images of "
            "this kind")
