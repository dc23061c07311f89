"""Training and fine-tuning, as a generator that yields progress and can be stopped.

:func:`train_iter` prepares targets and weight maps once, then repeats: draw random
windows around annotated pixels (CPU, cheap slicing), move them to the training device,
augment them there in one batched operation, and take an optimizer step on the weighted
cross-entropy (plus Dice if asked). After every epoch the model is validated; the best
validated weights are what training returns, also when the user stops it or the time
budget runs out, with the post-processing threshold that segments the fully annotated
validation images best. :func:`train` is the plain synchronous wrapper.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .annotation import labelled_planes_mask
from .atomic import writable_folder
from .augment import AugmentConfig, augment_batch
from .bundle import Model
from .defaults import BORDER_SIGMA, BORDER_W0
from .device import autocast, grad_scaler, resolve_device, smaller_batch_after
from .errors import ImageWarning, InputError, InputWarning, ModelFileError, warnings_named
from .familiarity import HESITATION, hesitation
from .metrics import PixelCounts, average_precision
from .model import NetworkConfig
from .model_choice import CLOSEST, closest_embedded_model
from .modelfile import model_file_path
from .normalize import IntensityRange, Normalization, as_planes, is_colour, normalization_for
from .postprocess import choose_postprocessing, enough_to_choose, foreground_probability, probabilities_to_labels
from .predict import GPU_TILE_SIZE, predict_probabilities
from .progress import run_to_end
from .registry import as_model
from .scale import (
    equivalent_diameters,
    pixel_size_for_model,
    resize_labels,
    resize_plane,
    scale_factor,
    scaled_shape,
)
from .targets import as_instance_labels, border_weights, class_targets, consecutive_labels, intensity_image_warning
from .threads import CpuUse, ThreadTuner

__all__ = ["TrainingSample", "TrainingConfig", "TrainingProgress", "TrainingResult", "train_iter", "train", "tune_threshold"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingSample:
    """One annotated image or stack.

    Args:
        image: 2D image, RGB image or stack (leading axes are planes).
        labels: Instance labels (0 = background) with the image's shape less channels.
        mask: Annotated pixels (same shape as labels). None: a 2D image counts whole; in
            a stack, the planes that hold at least one label count whole and the others
            are ignored (see :func:`~napari_unet.core.annotation.labelled_planes_mask`).
        name: Shown in messages.
        intensity_range: Intensities ``(low, high)`` mapped to 0 and 1 in every plane,
            instead of the model's normalization of each plane: the range the image is
            (or will be) predicted with (see ``intensity_range`` of
            :func:`~napari_unet.core.predict.predict_iter`).
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    name: str = "image"
    intensity_range: tuple[float, float] | None = None


#: Adam step size for a new network, unless told otherwise.
SCRATCH_LEARNING_RATE = 1e-3

#: Adam step size for fine-tuning a trained model validated on an image of its own, unless
#: told otherwise. ``bench/bench_finetune.py`` (the nuclei model, 5 images, 3 minutes on 2
#: CPU cores): 0.0002, 0.0005 and 0.001 all left the model as it was on its own kind (the
#: validation guard keeps it), and taught it contrast-inverted nuclei to AP50 0.623, 0.668
#: and 0.636 and EM cells to 0.572, 0.581 and 0.559.
FINE_TUNE_LEARNING_RATE = 5e-4

#: The gentler step of fine-tuning, where the model has much to lose:
#:
#: - when fewer than 4 images leave none to validate on whole: stripes of the training
#:   images cannot show the model forgetting what it knew (0.0005 then took AP50 on 75
#:   other images from 0.792 to 0.786; 0.0002 held it, 0.795);
#: - when the starting model already finds the painted objects (:data:`GOOD_START_AP50`):
#:   ``python bench/bench_modality.py --start closest --kinds he_tissue`` (``nuclei``
#:   reading H&E, 5 images, 3 minutes on 2 CPU cores) went from AP50 0.590 to 0.547 on the
#:   other images at 0.0005, and kept 0.590 at 0.0002.
GENTLE_FINE_TUNE_LEARNING_RATE = 2e-4

#: The starting model's AP50 on the whole annotated planes from which it is fine-tuned
#: gently (:data:`GENTLE_FINE_TUNE_LEARNING_RATE`): it already finds most objects.
GOOD_START_AP50 = 0.5

#: Validation planes whose outputs say how unsure a trained model is of its own kind of image.
HESITATION_PLANES = 20

#: Narrowest part of a plane left to train on beside a validation stripe held out of it, in pixels.
MIN_STRIPE_TRAINING_WIDTH = 16

#: Largest training patch edge: a batch of larger ones outgrows any GPU's memory.
MAX_PATCH_SIZE = 2048


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of a training run; saved with the model.

    Args:
        epochs: Passes over the training data (see ``steps_per_epoch``).
        max_minutes: Time budget; training ends at whichever of the two comes first.
        steps_per_epoch: Optimizer steps between validations; by default enough patches
            to cover the training pixels once (at least 8 steps).
        patch_size: Edge of the square training patches, in pixels.
        batch_size: Patches per step.
        learning_rate: Step size of the optimizer; None: :data:`SCRATCH_LEARNING_RATE`
            for a new network, :data:`FINE_TUNE_LEARNING_RATE` when fine-tuning with a
            whole image (or separate images) to validate on, and
            :data:`GENTLE_FINE_TUNE_LEARNING_RATE` when fine-tuning otherwise or from a
            model that already finds the painted objects. The model records the one used.
        schedule: "constant", or "cosine": the step size falls along half a cosine to
            a twentieth of ``learning_rate`` over the epochs or the time budget, whichever
            ends first.
        optimizer: "adam" or "sgd" (the paper's SGD with high momentum).
        momentum: Momentum of SGD (the paper uses 0.99).
        weight_decay: L2 penalty.
        w0: Height of the border weight term.
        sigma: Width of the border weight term, in pixels.
        dice_weight: Weight of a soft Dice loss added to the cross-entropy (0 = off).
        val_fraction: Share of the images kept for validation; with too few images, a
            stripe of that share of every image is kept instead (when fine-tuning a
            model, one whole image as long as 3 remain to train on).
        patience: Stop after this many validations without improvement (None = never).
        seed: Random seed of patch sampling, augmentation and initialization.
        device: "auto", "cpu", "cuda" or "mps".
        amp: Mixed precision where the device is faster with it: float16 on CUDA (with loss
            scaling), bfloat16 on a CPU with AMX
            (:func:`~napari_unet.core.device.mixed_precision_dtype`); validations too.
        augment: Augmentation strengths.
        freeze_norm: Keep the batch-norm statistics of the model being fine-tuned
            instead of re-estimating them from the few new images (None: only when
            fine-tuning). A handful of images gives poor statistics, and ones that
            drift away from what the rest of the network learned with; even on kinds
            of image the model never saw, re-estimating them did not pay off
            (``bench/bench_modality.py --batch-norm``).
    """

    epochs: int = 50
    max_minutes: float | None = None
    steps_per_epoch: int | None = None
    patch_size: int = 256
    batch_size: int = 4
    learning_rate: float | None = None
    schedule: str = "constant"
    optimizer: str = "adam"
    momentum: float = 0.99
    weight_decay: float = 0.0
    w0: float = BORDER_W0
    sigma: float = BORDER_SIGMA
    dice_weight: float = 0.0
    val_fraction: float = 0.1
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    freeze_norm: bool | None = None

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be 'adam' or 'sgd', not {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule must be 'constant' or 'cosine', not {self.schedule!r}")
        if self.epochs < 1:
            raise InputError(f"epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"the batch size must be at least 1, not {self.batch_size}")
        if not 8 <= self.patch_size <= MAX_PATCH_SIZE:
            raise InputError(f"the patch size must be from 8 to {MAX_PATCH_SIZE}, not {self.patch_size}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise InputError("the time budget must be positive")
        if not 0 <= self.val_fraction < 1:
            raise InputError("the validation fraction must be in [0, 1)")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise InputError("the learning rate must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        values = dict(values)
        if "augment" in values:
            values["augment"] = AugmentConfig.from_dict(values["augment"])
        return cls(**values)


@dataclass(frozen=True)
class TrainingProgress:
    """One step of training.

    Attributes:
        step: Optimizer steps done.
        total_steps: Steps planned from the epochs (the time budget may end sooner).
        epoch: Epochs done.
        loss: Training loss of this step.
        elapsed: Seconds since training started.
        validation: Validation metrics, on the steps that validated (else None).
        best_score: Best validation score so far (None before the first validation).
        busy_cpu: Share of the CPU other programs took over the last seconds, training
            on the CPU (else None).
    """

    step: int
    total_steps: int
    epoch: int
    loss: float
    elapsed: float
    validation: dict | None = None
    best_score: float | None = None
    busy_cpu: float | None = None


@dataclass
class TrainingResult:
    """What training returns.

    Attributes:
        model: The trained model, holding the best validated weights.
        history: One dict per validation.
        stop_reason: "epochs", "time budget", "early stopping" or "stopped".
        unchanged: Fine-tuning gave the model back as it came (no weights validated
            clearly better); its name and figures then stay.
        busy_cpu: Share of the CPU other programs took while training ran on the CPU
            (else None): from :data:`~napari_unet.core.threads.BUSY_CPU_SHARE` on, it
            made markedly fewer steps than the CPU gives when idle.
        started_from: The name of the model fine-tuning started from ("" for a new
            network or a model without a name): the closest embedded model's, when
            training chose it.
    """

    model: Model
    history: list[dict]
    stop_reason: str
    #: Fine-tuning gave the model back as it came: no weights validated clearly better.
    unchanged: bool = False
    busy_cpu: float | None = None
    started_from: str = ""

    @property
    def starting_score(self) -> float | None:
        """Validation score of the model fine-tuning started from (None: not validated)."""
        first = self.history[0] if self.history else {}
        return first.get("score") if first.get("step") == 0 else None

    def why_unchanged(self) -> str:
        """Why fine-tuning gave the model back, in words (for an ``unchanged`` result)."""
        if self.starting_score == 1.0:
            return ("the starting model already segments the held-out annotations without an error, "
                    "so training had nothing to gain")
        score = "" if self.starting_score is None else f" (score {self.starting_score:.3f})"
        return f"no training step validated clearly better than the starting model{score} on the held-out annotations"


@dataclass
class _Plane:
    image: np.ndarray  # (C, H, W) float32, normalized and padded
    target: np.ndarray  # (H, W) uint8
    weights: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool
    centers: np.ndarray  # flat indices of annotated pixels to center patches on
    labels: np.ndarray  # (H, W) original instance labels, unpadded
    region: tuple[slice, slice]  # the unpadded plane inside the padded arrays


@dataclass(frozen=True)
class _Unnormalized:
    """An image plane as a sample gives it, normalized only when its pixels are needed.

    Normalized whole, then resized, as prediction does. Held-out planes are normalized at
    each validation instead of being kept in float32 for the whole run: validation images
    take no memory beyond the caller's own.
    """

    plane: np.ndarray  # (C, H, W)
    normalize: Normalization | IntensityRange
    shape: tuple[int, int] | None = None  # resized to, after normalizing

    def pixels(self) -> np.ndarray:
        normalized = self.normalize(self.plane)
        return normalized if self.shape is None else resize_plane(normalized, self.shape)


def _pixels(image: np.ndarray | _Unnormalized) -> np.ndarray:
    """The normalized pixels of a plane's image."""
    return image.pixels() if isinstance(image, _Unnormalized) else image


def _split_planes(samples: Sequence[TrainingSample], model: Model) -> list[tuple]:
    """(name, :class:`_Unnormalized` image plane (C,H,W), labels plane, mask plane) of every annotated plane.

    Raises:
        InputError: If a sample cannot be used, naming the sample (the file, for the
            command line), as do the warnings about one.
    """
    planes = []
    for sample in samples:
        with _naming(sample.name):
            planes.extend(_sample_planes(sample, model))
    return planes


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """Input errors and image warnings raised within, given with ``name`` before them (see :func:`warnings_named`)."""
    with warnings_named(name):
        try:
            yield
        except InputError as error:
            message = str(error)
            raise InputError(message if message.startswith(f"{name}:") else f"{name}: {message}") from None


def _sample_planes(sample: TrainingSample, model: Model) -> Iterator[tuple]:
    normalize = normalization_for(model.normalization, sample.intensity_range)
    planes, stack_shape = as_planes(sample.image, model.config.in_channels, colour=model.normalization.colour)
    labels = np.asarray(sample.labels)
    if labels.shape != stack_shape + planes.shape[-2:]:
        raise InputError(f"labels of shape {labels.shape} do not match the image (shape {np.shape(sample.image)}); "
                         "they must cover the same pixels")
    labels = labels.reshape(-1, *planes.shape[-2:])
    if (looks_wrong := intensity_image_warning(labels)) is not None:
        warnings.warn(looks_wrong, ImageWarning, stacklevel=2)
    if sample.mask is None:
        # As in napari: the planes of a stack that hold a label are annotated, the
        # others ignored (not taught as background). A single plane counts whole.
        masks = labelled_planes_mask(labels) if len(labels) > 1 else np.ones(labels.shape, bool)
    else:
        masks = np.asarray(sample.mask, bool)
        if masks.size != labels.size:
            raise InputError("the annotation mask does not match the labels' shape")
        masks = masks.reshape(labels.shape)
    for plane, plane_labels, plane_mask in zip(planes, labels, masks):
        if plane_mask.any():
            yield sample.name, _Unnormalized(plane, normalize), as_instance_labels(plane_labels), plane_mask


def _resized(plane: tuple, factor: float) -> tuple:
    """A (name, :class:`_Unnormalized` image, labels, mask) plane resized by ``factor`` (unchanged for 1.0)."""
    if factor == 1.0:
        return plane
    name, image, labels, mask = plane
    shape = scaled_shape(labels.shape, factor)
    return name, replace(image, shape=shape), resize_labels(labels, shape), resize_labels(mask, shape)


def _prepare_plane(model: Model, config: TrainingConfig, normalized, labels, mask, window: int) -> _Plane:
    target = class_targets(labels, model.config.num_classes, model.gap)
    weights = border_weights(labels, config.w0, config.sigma, model.config.num_classes, model.gap, mask)
    height, width = labels.shape
    pad_h, pad_w = max(window - height, 0), max(window - width, 0)
    if pad_h or pad_w:
        # Small images are mirrored up to the window size; the mirrored part is unannotated.
        spatial = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        mode = "reflect" if min(height, width) > 1 else "edge"
        normalized = np.pad(normalized, ((0, 0),) + spatial, mode=mode)
        target = np.pad(target, spatial, mode=mode)
        weights = np.pad(weights, spatial, mode=mode)
        mask = np.pad(mask, spatial, mode="constant")
    region = (slice(pad_h // 2, pad_h // 2 + height), slice(pad_w // 2, pad_w // 2 + width))
    centers = np.flatnonzero(mask)
    return _Plane(normalized, target, weights, mask, centers, labels, region)


def _validation_split(planes: list, fraction: float, rng: np.random.Generator, whole_plane: bool = False):
    """Split (name, image, labels, mask) planes into training and validation.

    Whole planes are held out when there are enough, always leaving one to train on;
    otherwise the last ``fraction`` of every plane's columns is held out (and removed from
    its training mask). With ``whole_plane``, one whole plane is held out even when
    ``fraction`` of the planes rounds to none, as long as 3 remain to train on.
    """
    if fraction <= 0:
        return planes, []
    count = min(int(round(len(planes) * fraction)), len(planes) - 1)
    if whole_plane and count == 0 and len(planes) >= 4:
        count = 1
    if count >= 1:
        order = rng.permutation(len(planes))
        held = set(order[:count].tolist())
        return [p for i, p in enumerate(planes) if i not in held], [p for i, p in enumerate(planes) if i in held]
    train, validation = [], []
    for name, image, labels, mask in planes:
        width = labels.shape[-1]
        cut = width - max(int(round(width * fraction)), 1)
        if cut < MIN_STRIPE_TRAINING_WIDTH:
            train.append((name, image, labels, mask))  # too narrow to split
            continue
        if not mask[:, cut:].any():
            train.append((name, image, labels, mask))  # nothing annotated in the stripe
            continue
        train_mask = mask.copy()
        train_mask[:, cut:] = False
        # The stripe is cut from the plane normalized whole, as prediction sees it.
        image = _pixels(image)
        train.append((name, image, labels, train_mask))
        validation.append((name, image[..., cut:], labels[:, cut:], mask[:, cut:]))
    return train, validation


def _intensity_ranges(samples: Sequence[TrainingSample]) -> list:
    """The samples' distinct intensity ranges, as the model records them.

    Empty when every sample is scaled by the model's normalization; among ranges, None
    stands for the samples that are.

    Raises:
        InputError: If a range is not two numbers, the lower first.
    """
    ranges = {None if sample.intensity_range is None else IntensityRange.of(sample.intensity_range)
              for sample in samples}
    if ranges <= {None}:
        return []
    pairs = sorted((scaling.low, scaling.high) for scaling in ranges if scaling is not None)
    return [list(pair) for pair in pairs] + ([None] if None in ranges else [])


def _object_diameter(planes) -> float | None:
    diameters = np.concatenate([equivalent_diameters(labels[mask]) for _, _, labels, mask in planes])
    return float(np.median(diameters)) if diameters.size else None


class _PatchSampler:
    """Draws random training windows centered on annotated pixels."""

    def __init__(self, planes: list[_Plane], window: int, rng: np.random.Generator):
        self.planes = planes
        self.window = window
        self.rng = rng
        sizes = np.array([len(p.centers) for p in planes], float)
        self.plane_probability = sizes / sizes.sum()

    def __call__(self, batch: int):
        w = self.window
        channels = self.planes[0].image.shape[0]
        images = np.empty((batch, channels, w, w), np.float32)
        targets = np.empty((batch, w, w), np.uint8)
        weights = np.empty((batch, w, w), np.float32)
        masks = np.empty((batch, w, w), bool)
        for index in range(batch):
            plane = self.planes[self.rng.choice(len(self.planes), p=self.plane_probability)]
            height, width = plane.target.shape
            cy, cx = divmod(int(plane.centers[self.rng.integers(len(plane.centers))]), width)
            top = min(max(cy - w // 2, 0), height - w)
            left = min(max(cx - w // 2, 0), width - w)
            window = (slice(top, top + w), slice(left, left + w))
            images[index] = plane.image[(slice(None),) + window]
            targets[index] = plane.target[window]
            weights[index] = plane.weights[window]
            masks[index] = plane.mask[window]
        return images, targets, weights, masks


class _BatchesAhead:
    """Batches of a :class:`_PatchSampler`, each drawn in a second thread during the step before.

    On a GPU the step is short and the CPU's sampling of the next batch would leave the
    GPU idle; drawn ahead, it overlaps the step (the main thread waits for the GPU with
    the interpreter lock released). Batches come in the sampler's own order, so a seed
    gives the same patches.
    """

    def __init__(self, sampler: _PatchSampler):
        self._sampler = sampler
        self._drawing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-unet-patches")
        self._next: Future | None = None

    def __call__(self, batch_size: int) -> tuple[np.ndarray, ...]:
        if self._next is None:
            self._next = self._drawing.submit(self._sampler, batch_size)
        batch = self._next.result()
        self._next = self._drawing.submit(self._sampler, batch_size)
        # A batch drawn before running out of memory halved the batch size is cut to it.
        return tuple(part[:batch_size] for part in batch)

    def close(self) -> None:
        self._drawing.shutdown(wait=True, cancel_futures=True)


def _loss(logits, target, weights, mask, dice_weight: float) -> torch.Tensor:
    """Weighted cross-entropy over annotated pixels (plus soft Dice of the foreground)."""
    mask = mask.float()
    annotated = mask.sum().clamp(min=1.0)
    pixel_loss = F.cross_entropy(logits.float(), target, reduction="none")
    # Multiplying by the mask (not indexing) keeps unannotated pixels at exactly zero
    # loss and zero gradient while the tensor shapes stay fixed.
    loss = (pixel_loss * weights * mask).sum() / annotated
    if dice_weight > 0:
        foreground = 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]
        truth = (target > 0).float()
        intersection = (foreground * truth * mask).sum()
        total = ((foreground + truth) * mask).sum()
        loss = loss + dice_weight * (1.0 - (2 * intersection + 1.0) / (total + 1.0))
    return loss


def _set_learning_rate(optimizer, config: TrainingConfig, step_fraction: float, elapsed: float) -> None:
    done = step_fraction
    if config.max_minutes is not None:
        done = max(done, elapsed / (60 * config.max_minutes))
    scale = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate * scale


def training_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the network and its batches while training on ``device``.

    Channels-last on the CPU, which oneDNN convolves without reordering the maps at
    every layer: a step of the default network on 2 cores took 1.4 to 1.5 times less in
    float32, 1.7 to 1.9 times less in bfloat16. Elsewhere as they are (not measured on a
    GPU).
    """
    return torch.channels_last if device.type == "cpu" else torch.preserve_format


def _step(network, optimizer, scaler, batch, config: TrainingConfig, device, generator, input_size: int,
          output_size: int) -> torch.Tensor:
    """One optimizer step on a batch of patches; returns the loss."""
    images, targets, weights, masks = (torch.from_numpy(a).to(device, non_blocking=True) for a in batch)
    images, targets, weights, masks = augment_batch(
        images, targets, weights, masks, (input_size, input_size), config.augment, generator
    )
    targets, weights, masks = (_center_crop(t, output_size) for t in (targets, weights, masks))
    images = images.to(memory_format=training_memory_format(device))
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, config.amp):
        logits = network(images)
    loss = _loss(logits, targets, weights, masks, config.dice_weight)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def _cpu_state(network: torch.nn.Module) -> dict:
    return {key: value.detach().cpu() for key, value in network.state_dict().items()}


def _center_crop(tensor: torch.Tensor, size: int) -> torch.Tensor:
    offset = (tensor.shape[-1] - size) // 2
    if offset == 0:
        return tensor
    return tensor[..., offset : offset + size, offset : offset + size]


def _rank(validation: dict) -> tuple[float, float]:
    """How good a validation is: by its score, and on equal scores by pixel IoU.

    Few or weak validation objects often give equal AP (zero, or one) to weights that
    differ; their pixels still tell them apart.
    """
    return validation["score"], validation["iou"]


def _clearly_better(candidate: dict, given: dict | None) -> bool:
    """Whether fine-tuned weights beat the given model by more than the validation resolves.

    The model a user fine-tunes is replaced only by weights that make at least 2 (and at
    least 1 %) fewer errors on the validation objects: on a stripe held out of a few
    images a single object moves the score by a few percent, and following such a
    difference made ``nuclei`` worse on the other images of its kind (in
    ``bench/bench_finetune.py``: AP 1.000 against 0.988 on the stripe after 24 steps,
    AP50 0.851 -> 0.835 on the other 75 images).
    """
    if given is None or "errors" not in candidate:
        return True
    return given["errors"] - candidate["errors"] >= max(2, round(0.01 * given["objects"]))


def _network_outputs(model: Model, planes: list, device: torch.device, amp: bool):
    """``(probabilities, labels, mask)`` of each ``(name, image, labels, mask)`` plane.

    Tiles are of the GPU's size on every device: a CPU's default, whole planes as
    memory allows, would take that memory from training, which holds its own beside them.
    """
    for _, image, labels, mask in planes:
        probabilities = run_to_end(
            predict_probabilities(model.network, _pixels(image), GPU_TILE_SIZE, None, device, amp)
        )
        yield probabilities, labels, mask


def validate(model: Model, planes: list, device: torch.device, amp: bool) -> dict:
    """Pixel IoU/F1 over the annotated pixels and AP at IoU 0.5 on fully annotated planes.

    The planes are ``(name, image, labels, mask)``, as :func:`_split_planes` makes them
    (the image normalized, or :class:`_Unnormalized`). ``score`` is the AP when some
    validation plane is fully annotated, else the IoU. With AP come ``objects``
    (annotated objects on those planes) and ``errors`` (false and missed objects at IoU
    0.5).
    """
    # Counted plane by plane: a validation stack keeps no plane's labels beyond its own.
    pixels, plane_ap, objects, errors = PixelCounts(), [], 0, 0
    for probabilities, labels, mask in _network_outputs(model, planes, device, amp):
        predicted = probabilities_to_labels(probabilities, model.threshold, gap=model.gap,
                                            object_diameter=model.object_diameter, separation=model.separation)
        pixels.add(predicted, labels, mask)
        if mask.all():
            instances = average_precision(labels, predicted, thresholds=(0.5,))
            plane_ap.append(instances["ap_mean"][0])
            objects += instances["tp"][0] + instances["fn"][0]
            errors += instances["fp"][0] + instances["fn"][0]
    scores = pixels.scores()
    result = {"iou": float(scores["iou"]), "f1": float(scores["f1"])}
    if plane_ap:
        result["ap50"] = float(np.mean(plane_ap))
        result["objects"], result["errors"] = int(objects), int(errors)
    result["score"] = result.get("ap50", result["iou"])
    return result


#: Whole annotated planes the starting model segments before fine-tuning, to see whether
#: objects were left unpainted (each costs one prediction).
UNPAINTED_CHECK_PLANES = 3


def _starting_model_on_painted_planes(model: Model, planes: list, device: torch.device, amp: bool) -> float | None:
    """The starting model's mean AP50 on a few whole annotated planes (None without any); warns
    when it finds more objects where nothing is painted than are painted.

    Every pixel of an annotated plane that is not painted is learned as background: the
    first thing users do wrong is to paint a few objects of a plane and leave the rest,
    which then teaches the model to miss them (a contrast-inverted DSB2018 image with 15
    of its 133 nuclei painted took held-out AP50 to about 0.2, against 0.8 with a region
    drawn around them). Only whole planes (no regions) are looked at, a few of them.
    """
    whole = [plane for plane in planes if plane[3].all()][:UNPAINTED_CHECK_PLANES]
    unpainted = painted = 0
    ap50 = []
    for probabilities, labels, _ in _network_outputs(model, whole, device, amp):
        predicted = probabilities_to_labels(probabilities, model.threshold, gap=model.gap,
                                            object_diameter=model.object_diameter, separation=model.separation)
        overlapping = np.unique(predicted[labels > 0])
        unpainted += int(predicted.max()) - np.count_nonzero(overlapping)
        painted += consecutive_labels(labels)[1]
        ap50.append(average_precision([labels], [predicted], thresholds=(0.5,))["ap_mean"][0])
    if unpainted >= max(10, painted):
        names = ", ".join(dict.fromkeys(name for name, _, _, _ in whole))
        warnings.warn(f"{names}: the starting model finds {unpainted} objects where nothing is painted, against "
                      f"{painted} painted; every unpainted pixel of an annotated plane is learned as background, so "
                      "paint every object, or draw rectangles around the painted ones (the Train widget's regions) "
                      "so that only they count; if those are not objects but what the model must unlearn, all is "
                      "well", InputWarning, stacklevel=4)
    return float(np.mean(ap50)) if ap50 else None


def _tuned_postprocessing(model: Model, planes: list, device: torch.device, amp: bool) -> tuple[float, str]:
    """The post-processing threshold and separation that segment the fully annotated ``planes`` best."""
    complete = [plane for plane in planes if plane[3].all()]
    truths = [labels for _, _, labels, _ in complete]
    if not enough_to_choose(truths):
        return model.threshold, model.separation  # spare the network pass: they would stay
    # One plane's outputs at a time, however many planes there are.
    probabilities = (plane_probabilities for plane_probabilities, _, _ in _network_outputs(model, complete, device, amp))
    return choose_postprocessing(probabilities, truths, model.threshold, gap=model.gap,
                                 object_diameter=model.object_diameter, separation=model.separation)


def tune_threshold(model: Model, samples: Sequence[TrainingSample], device: str | torch.device = "auto",
                   diameter: float | None = None, amp: bool = True) -> float:
    """Choose ``model.threshold`` (and ``model.separation``) on fully annotated images, as training does at its end.

    For models trained elsewhere or before thresholds were chosen. Changes ``model``.

    Args:
        model: The model whose threshold is chosen.
        samples: Annotated images (only fully annotated planes count).
        device: Torch device or "auto".
        diameter: Typical object diameter in the images, in pixels (resized as in training).
        amp: Predict them in mixed precision where the device is faster with it (see
            :func:`~napari_unet.core.device.mixed_precision_dtype`), as prediction does by default.

    Returns:
        The chosen threshold (also set on ``model``).
    """
    factor = scale_factor(model, diameter, None)
    planes = [_resized(plane, factor) for plane in _split_planes(samples, model)]
    model.threshold, model.separation = _tuned_postprocessing(model, planes, resolve_device(device), amp=amp)
    return model.threshold


def train_iter(
    samples: Sequence[TrainingSample],
    model: Model | None = None,
    config: TrainingConfig | None = None,
    network_config: NetworkConfig | None = None,
    stop: threading.Event | None = None,
    pixel_size: tuple[float, float] | None = None,
    pixel_unit: str = "",
    checkpoint: str | os.PathLike | None = None,
    validation_samples: Sequence[TrainingSample] | None = None,
    diameter: float | None = None,
) -> Iterator[TrainingProgress]:
    """Train (or fine-tune) a model; yields :class:`TrainingProgress`, returns :class:`TrainingResult`.

    The given model is never changed: training works on a copy.

    Args:
        samples: Annotated images.
        model: Model to fine-tune (or an embedded model's name or a model file's path;
            ``"closest"``: the embedded model these images look most like, see
            :func:`~napari_unet.core.model_choice.closest_embedded_model`); None trains
            a new one from scratch.
        config: Training settings.
        network_config: Architecture when training from scratch.
        stop: Set this event to end training after the current step; the best model so
            far is returned.
        pixel_size: Physical pixel size ``(y, x)`` of the training images, if known.
        pixel_unit: Unit of ``pixel_size``.
        checkpoint: Model file rewritten (atomically) whenever validation improves, so a
            run that is killed still leaves its best model behind.
        validation_samples: Annotated images to validate on, never trained on; when
            given, ``config.val_fraction`` is ignored and no training image is held out.
        diameter: Typical object diameter in the images, in pixels. When fine-tuning a
            model that records its own (or, without a diameter, when both pixel sizes
            are known), the images are resized so that their objects match the model's,
            as prediction does, and the model keeps the object diameter it records (its
            predictions told the same diameter bring the objects to it again); otherwise
            it records the median diameter of the annotated objects.

    Raises:
        InputError: If there is nothing annotated to train on, or no object in what is
            annotated, the data do not fit, or a diameter is given for a new model.
    """
    run = _set_up(samples, model, config, network_config, pixel_size, pixel_unit, checkpoint, validation_samples,
                  diameter)
    config, model, network, device = run.config, run.model, run.model.network, run.device
    stepper = _Stepper(run)
    best = _BestWeights()
    history: list[dict] = []
    start = time.monotonic()
    if run.fine_tuning and run.validation_planes:
        # The model as it came is the first candidate: fine-tuning that does not clearly
        # make the validation images better gives it back unchanged.
        validation = validate(model, run.validation_planes, device, config.amp)
        best.start_from_given(validation, network)
        history.append({"step": 0, "epoch": 0, "loss": None, "seconds": round(time.monotonic() - start, 2), **validation})
    # The new weights are validated with the post-processing they will be saved with, which
    # grows objects by the size of this run's objects (the given model's own stays in
    # ``run.identity``, should it be given back).
    model.object_diameter = run.diameter or model.object_diameter
    stop_reason = "epochs"
    try:
        while stepper.step < stepper.total_steps:
            if stop is not None and stop.is_set():
                stop_reason = "stopped"
                break
            loss = stepper.train_step(time.monotonic() - start)
            if loss is None:  # out of memory: the batch was halved, the step is taken again
                continue
            step = stepper.step
            validation = None
            # The last step of a time budget is validated like the end of an epoch: with a
            # decaying learning rate the last weights are often the best ones.
            out_of_time = config.max_minutes is not None and time.monotonic() - start >= 60 * config.max_minutes
            if step % stepper.steps_per_epoch == 0 or step == stepper.total_steps or out_of_time:
                record = {"step": step, "epoch": step // stepper.steps_per_epoch, "loss": loss,
                          "seconds": round(time.monotonic() - start, 2)}
                improved = False
                if run.validation_planes:
                    validation = validate(model, run.validation_planes, device, config.amp)
                    record.update(validation)
                    improved = best.offer(validation, network)
                history.append(record)
                if run.checkpoint is not None and (not run.validation_planes or improved):
                    _save_checkpoint(model, run.checkpoint, history, run.settings("checkpoint", stepper),
                                     run.diameter, run.pixel_size, run.pixel_unit)
                logger.info("step %d: %s", step, record)
            yield TrainingProgress(step=step, total_steps=stepper.total_steps, epoch=step // stepper.steps_per_epoch,
                                   loss=loss, elapsed=time.monotonic() - start, validation=validation,
                                   best_score=best.score, busy_cpu=stepper.busy_cpu)
            if config.patience is not None and best.validations_without_gain >= config.patience:
                stop_reason = "early stopping"
                break
            if out_of_time and step < stepper.total_steps:
                stop_reason = "time budget"
                break
    finally:
        stepper.close()
    return _finished(run, stepper, best, history, stop_reason)


@dataclass
class _Run:
    """What a training run works with, once its inputs are checked and split."""

    config: TrainingConfig  # with the learning rate chosen, as the model records it
    model: Model  # the copy being trained
    fine_tuning: bool
    identity: tuple  # name, training data, figures and diameter of the given model
    device: torch.device
    train_planes: list
    validation_planes: list
    diameter: float | None  # of this run's objects, at the scale the network sees them (None: the model's own)
    pixel_size: tuple[float, float] | None
    pixel_unit: str
    intensity_ranges: list
    checkpoint: str | os.PathLike | None
    rng: np.random.Generator

    def settings(self, stop_reason: str, stepper: _Stepper) -> dict:
        """What the model records of this run, as it stands."""
        return dict(self.config.to_dict(), stop_reason=stop_reason, steps=stepper.step,
                    batch_size=stepper.batch_size, intensity_ranges=self.intensity_ranges)


def _set_up(samples, model, config, network_config, pixel_size, pixel_unit, checkpoint, validation_samples,
            diameter) -> _Run:
    """Check the inputs of :func:`train_iter`, copy the model, and split the annotated planes."""
    config = config or TrainingConfig()
    if isinstance(model, str) and model == CLOSEST:
        choice = closest_embedded_model([(sample.image, sample.labels, sample.mask) for sample in samples],
                                        device=config.device, amp=config.amp)
        logger.info("starting from %s, the embedded model closest to these images", choice)
        model = choice.model()
    if model is not None:
        # A model that hands colour images to another (nuclei: H&E to nuclei-he) is
        # fine-tuned as the one that segments these images.
        model = as_model(model)
        model = model.for_colours(is_colour(sample.image, model.config.in_channels) for sample in samples)
    if model is None and diameter:
        raise InputError("an object diameter is for fine-tuning a model, whose objects the images are rescaled to; "
                         "a new model learns the objects at the size they have in these images")
    # Every sample's range is checked before any work; the model records them.
    intensity_ranges = _intensity_ranges([*samples, *(validation_samples or ())])
    if checkpoint is not None:
        try:
            # Refused before any work, not at the first checkpoint minutes later.
            writable_folder(model_file_path(checkpoint).parent)
        except ModelFileError as error:
            raise InputError(f"the checkpoint is a model file: {error}") from None
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    fine_tuning = model is not None
    model = model.copy() if fine_tuning else Model.new(network_config or NetworkConfig())
    model.colour_model = None  # the new weights are for the kind of images given
    identity = (model.name, model.training_data, model.evaluation, model.object_diameter)
    if fine_tuning:
        # New weights are another model: the name and the figures were the given model's.
        model.name, model.evaluation = "", {}
        model.training_data = f"fine-tuned from {identity[0] or 'a model'} on {len(samples)} image(s)" + (
            f"; before that: {identity[1]}" if identity[1] else "")
    device = resolve_device(config.device)
    model.network.to(device, memory_format=training_memory_format(device))

    factor, rescaled = 1.0, False
    if fine_tuning:
        # Fine-tuning: bring the new images to the scale the model already knows.
        comparable_pixels = pixel_size_for_model(model, pixel_size, pixel_unit)
        factor = scale_factor(model, diameter, comparable_pixels)
        rescaled = bool(diameter) or comparable_pixels is not None
        if factor != 1.0 and model.pixel_size:
            pixel_size, pixel_unit = model.pixel_size, model.pixel_unit
    planes = [_resized(plane, factor) for plane in _split_planes(samples, model)]
    if not planes:
        raise InputError("nothing is annotated: draw labels in at least one plane (or region) first")
    if not any(labels[mask].any() for _, _, labels, mask in planes):
        # Such a model could only learn that nothing is ever an object.
        raise InputError("the annotations contain no object: paint at least one object (rectangles or planes "
                         "without objects then teach background beside it)")
    if validation_samples is None:
        train_planes, validation_planes = _held_out(planes, config, rng, fine_tuning)
    else:
        train_planes = planes
        validation_planes = [_resized(plane, factor) for plane in _split_planes(validation_samples, model)]
    start_ap50 = _starting_model_on_painted_planes(model, planes, device, config.amp) if fine_tuning else None
    if config.learning_rate is None:
        # Fewer training planes than planes: whole ones were held out (stripes keep them all).
        unseen = validation_samples is not None or len(train_planes) < len(planes)
        good_start = start_ap50 is not None and start_ap50 >= GOOD_START_AP50
        chosen = (SCRATCH_LEARNING_RATE if not fine_tuning
                  else FINE_TUNE_LEARNING_RATE if unseen and not good_start else GENTLE_FINE_TUNE_LEARNING_RATE)
        config = replace(config, learning_rate=chosen)  # recorded with the model
    return _Run(config=config, model=model, fine_tuning=fine_tuning, identity=identity, device=device,
                train_planes=train_planes, validation_planes=validation_planes,
                # Brought to the model's scale by the diameter (or pixel size) given, the objects
                # have the model's size, as predictions told the same will bring them to. The
                # annotated planes would say less in a z-stack: most of them cut the objects
                # off their middle (the plant nuclei's planes measured 11.7 pixels against the
                # model's 16.7, and predictions with that size lost 0.08 3D AP50).
                diameter=None if rescaled else _object_diameter(train_planes), pixel_size=pixel_size,
                pixel_unit=pixel_unit,
                intensity_ranges=intensity_ranges, checkpoint=checkpoint, rng=rng)


def _held_out(planes: list, config: TrainingConfig, rng: np.random.Generator, fine_tuning: bool) -> tuple[list, list]:
    """The training and validation planes when no validation images are given, said when none can be held out.

    A model being fine-tuned is kept unless the new weights validate clearly better, and
    only a plane it never trained on can show that they lost generality: a stripe of a
    training image improves with the image (measured, fine-tuning on 5 DSB2018 images:
    their stripes 19 -> 6 errors while the other 75 images fell from AP50 0.859 to 0.840;
    with one of the 5 held out whole, the model was kept). So fine-tuning holds out whole
    planes where it can.
    """
    train_planes, validation_planes = _validation_split(planes, config.val_fraction, rng, whole_plane=fine_tuning)
    if not validation_planes and config.val_fraction > 0:
        kept = "replace the starting model" if fine_tuning else "are kept"
        warnings.warn(f"no annotation is left to validate on (no image can be held out whole, and holding out "
                      f"the right-most {config.val_fraction:.0%} of each plane leaves nothing annotated there, or "
                      f"under {MIN_STRIPE_TRAINING_WIDTH} pixels to train on): training cannot check that the model "
                      f"gets better, and its last weights {kept}; annotate more planes, larger ones, or up to "
                      "their right edge", InputWarning, stacklevel=4)
    return train_planes, validation_planes


class _Stepper:
    """The optimizer steps of a run: patches, optimizer, learning-rate schedule and CPU threads."""

    def __init__(self, run: _Run):
        config, network, device = run.config, run.model.network, run.device
        self.config, self.network, self.device = config, network, device
        self.input_size = network.valid_input_size(config.patch_size)
        self.output_size = network.output_size(self.input_size)
        # Room around the patch for rotation, zoom, shift and deformation to pull in real context.
        window = self.input_size + 2 * (self.input_size // 4 + int(3 * config.augment.elastic_sigma))
        prepared = [_prepare_plane(run.model, config, _pixels(image), labels, mask, window)
                    for _, image, labels, mask in run.train_planes]
        annotated = sum(len(plane.centers) for plane in prepared)
        self.steps_per_epoch = config.steps_per_epoch or max(
            8, math.ceil(annotated / (self.output_size**2 * config.batch_size)))
        self.total_steps = config.epochs * self.steps_per_epoch
        self.optimizer = _optimizer([p for p in network.parameters() if p.requires_grad], config)
        self.scaler = grad_scaler(device, config.amp)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.freeze_norm = run.fine_tuning if config.freeze_norm is None else config.freeze_norm
        self.batch_size = config.batch_size  # halved if the device runs out of memory
        self.step = 0
        self._batches = _BatchesAhead(_PatchSampler(prepared, window, run.rng))
        # On the CPU, as many threads as make steps fastest beside whatever else runs
        # there, and what the user is told of that.
        self._threads = ThreadTuner() if device.type == "cpu" else None
        self._cpu_use = CpuUse() if device.type == "cpu" else None
        #: Share of the CPU other programs took over the whole run, once closed (None off the CPU).
        self.busy_cpu_over_run: float | None = None

    @property
    def busy_cpu(self) -> float | None:
        """Share of the CPU other programs took over the last seconds (None off the CPU)."""
        return self._threads.busy_cpu if self._threads is not None else None

    def train_step(self, elapsed: float) -> float | None:
        """One optimizer step; its loss, or None when the device ran out of memory and the batch was halved."""
        config, network = self.config, self.network
        if config.schedule == "cosine":
            _set_learning_rate(self.optimizer, config, self.step / self.total_steps, elapsed)
        network.train()
        if self.freeze_norm:
            for module in network.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()
        started = time.monotonic()
        try:
            loss = _step(network, self.optimizer, self.scaler, self._batches(self.batch_size), config, self.device,
                         self.generator, self.input_size, self.output_size)
        except RuntimeError as error:
            self.optimizer.zero_grad(set_to_none=True)
            self.batch_size = smaller_batch_after(error, self.batch_size, self.device, "patches", (
                f"the {self.device.type.upper()} ran out of memory training on a single patch of "
                f"{self.input_size}x{self.input_size} pixels; choose a smaller patch size"))
            return None
        self.step += 1
        # Read after the whole step is queued: a check between forward and backward
        # would make the CPU wait for the GPU halfway through every step.
        loss_value = loss.item()
        if self._threads is not None:
            self._threads.step_took(time.monotonic() - started)
        if not math.isfinite(loss_value):
            raise FloatingPointError("training diverged (the loss is not a number); try a lower learning rate")
        return loss_value

    def close(self) -> None:
        """Stop preparing patches, give torch its threads back, and measure what other programs took of the CPU."""
        self._batches.close()
        if self._threads is not None:
            self._threads.restore()
            self.busy_cpu_over_run = self._cpu_use.others_share()


def _optimizer(parameters: list, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                           weight_decay=config.weight_decay)


class _BestWeights:
    """The best validated weights so far, and the rule that keeps a model being fine-tuned.

    The given model is the first candidate (:meth:`start_from_given`); new weights replace
    it only when they validate clearly better (:func:`_clearly_better`), then whenever they
    rank higher. On a tie the later, longer-trained weights are kept (small validation sets
    often reach a perfect score early), but a tie is no gain for patience, and does not
    replace the model being fine-tuned.
    """

    def __init__(self):
        self.score: float | None = None
        self.rank: tuple | None = None
        self.state: dict | None = None
        self.is_given = False
        self.validations_without_gain = 0
        self._given: dict | None = None  # the given model's validation, while it is the best candidate

    def start_from_given(self, validation: dict, network: torch.nn.Module) -> None:
        self.score, self.rank, self.state = validation["score"], _rank(validation), copy.deepcopy(_cpu_state(network))
        self.is_given = True
        # A model that matches no validation object cannot be made worse: nothing to protect.
        self._given = None if validation.get("ap50") == 0 else validation

    def offer(self, validation: dict, network: torch.nn.Module) -> bool:
        """Keep ``network``'s weights if ``validation`` makes them the best; whether it did."""
        rank = _rank(validation)
        gained = self.rank is None or (rank > self.rank and _clearly_better(validation, self._given))
        improved = gained or (rank == self.rank and self._given is None)
        if improved:
            self.score, self.rank, self._given = validation["score"], rank, None
            self.state = copy.deepcopy(_cpu_state(network))
            self.is_given = False
        self.validations_without_gain = 0 if gained else self.validations_without_gain + 1
        return improved


def _finished(run: _Run, stepper: _Stepper, best: _BestWeights, history: list[dict], stop_reason: str
              ) -> TrainingResult:
    """The model with the best weights, its threshold and what it records of the run."""
    model, network, device, config = run.model, run.model.network, run.device, run.config
    if best.state is not None:
        network.load_state_dict(best.state)
    if run.validation_planes and not best.is_given:
        threshold, separation = _tuned_postprocessing(model, run.validation_planes, device, config.amp)
        if (threshold, separation) != (model.threshold, model.separation):
            logger.info("post-processing threshold %.2f -> %.2f, separation %s -> %s (best on the validation images)",
                        model.threshold, threshold, model.separation, separation)
        model.threshold, model.separation = threshold, separation
        # How unsure the model is of its own kind of image, for the unfamiliar-image check.
        model.evaluation[HESITATION] = round(hesitation(
            foreground_probability(probabilities) for probabilities, _, _ in
            _network_outputs(model, run.validation_planes[:HESITATION_PLANES], device, config.amp)), 4)
    network.to("cpu", memory_format=torch.contiguous_format).eval()
    diameter, pixel_size = run.diameter, run.pixel_size
    if best.is_given:
        # The given model as it was: what it records of its objects' size and of its pixels
        # rescales every prediction, so this run's data must not replace it.
        model.name, model.training_data, model.evaluation, model.object_diameter = run.identity
        diameter, pixel_size = None, None
    _record(model, history, run.settings(stop_reason, stepper), diameter, pixel_size, run.pixel_unit)
    return TrainingResult(model=model, history=history, stop_reason=stop_reason, unchanged=best.is_given,
                          busy_cpu=stepper.busy_cpu_over_run, started_from=run.identity[0] if run.fine_tuning else "")


def _record(model: Model, history: list[dict], training: dict, diameter, pixel_size, pixel_unit) -> None:
    """Write what this training run learned about the data into the model's metadata."""
    offset = model.history[-1]["step"] if model.history else 0
    model.history = model.history + [dict(r, step=r["step"] + offset) for r in history]
    model.training = training
    model.object_diameter = diameter or model.object_diameter
    if pixel_size is not None:
        model.pixel_size, model.pixel_unit = tuple(float(v) for v in pixel_size), pixel_unit


def _save_checkpoint(model: Model, path, history, training, diameter, pixel_size, pixel_unit) -> None:
    snapshot = Model(**{**model.__dict__, "network": copy.deepcopy(model.network).to("cpu").eval()})
    _record(snapshot, history, training, diameter, pixel_size, pixel_unit)
    snapshot.save(path)


def train(samples, on_progress: Callable | None = None, **kwargs) -> TrainingResult:
    """Synchronous :func:`train_iter`; ``on_progress`` is called with every step's progress."""
    return run_to_end(train_iter(samples, **kwargs), on_progress)
