"""The ``napari-unet`` command line: train, predict, evaluate, list models, write sample data.

A thin front end over :mod:`napari_unet.core`: it parses flags, reads and writes files,
shows progress, and turns the core's errors into one line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from . import __version__
from .core.defaults import BORDER_SIGMA, BORDER_W0
from .core.prediction_settings import DEFAULT_SETTINGS, VIEWS, PredictionSettings

EXIT_USAGE = 2
EXIT_FAILED = 1


class _Progress:
    """A one-line progress bar on stderr (redrawn at most ten times a second)."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label = label
        self.stream = stream
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.active = stream.isatty()

    def update(self, done: int, total: int, note: str = "") -> None:
        now = time.monotonic()
        if not self.active or (now - self.last_draw < 0.1 and done < total):
            return
        self.last_draw = now
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {now - self.start:6.1f}s {note}\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\n")
            self.stream.flush()


class _Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are one line, as every other error of the command line.

    argparse's own puts the whole usage block above the line that says what was wrong;
    here that line comes alone, with where to read the usage.
    """

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _converted(text: str, convert, kind: str):
    """``convert(text)``, or a refusal that says which ``kind`` of value was expected."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {kind}, not {text!r}") from None


def _path(text: str) -> str:
    """A path that names something: an empty one (an unset shell variable) would mean "here"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a file or folder")
    return text


def _positive_int(text: str) -> int:
    value = _converted(text, int, "a positive whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _converted(text, int, "a whole number of 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of 0 or more, not {text}")
    return value


def _intensity(text: str) -> float:
    """One end of ``--intensity-range``, which is two words: a range written as one is said to be."""
    return _converted(text, float, "two numbers with a space between them, LOW HIGH" if "," in text else "a number")


def _positive_float(text: str) -> float:
    value = _converted(text, float, "a positive number")
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _converted(text, float, "a number of 0 or more")
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, not {text}")
    return value


def _fraction(text: str) -> float:
    value = _converted(text, float, "a number of at least 0 and below 1")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return value


def _probability(text: str) -> float:
    value = _converted(text, float, "a probability, from 0 to 1")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability, from 0 to 1, not {text}")
    return value


def _sample_size(text: str) -> int:
    value = _converted(text, int, "a whole number of pixels from 32 to 4096")
    if not 32 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be from 32 to 4096 pixels, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="napari-unet",
        description="Train U-Nets on annotated microscopy images and segment TIFF images and stacks.",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the core's log messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train or fine-tune a model on annotated images",
        description="Train or fine-tune a U-Net. Images and labels pair by file name "
        "(a single image file pairs with a single labels file); multi-page TIFFs pair page by page.",
    )
    train.add_argument("--images", required=True, type=_path, help="TIFF file, folder of TIFFs, or glob pattern of the images")
    train.add_argument("--labels", required=True, type=_path, help="instance labels (0 = background, 1..N = objects), "
                       "or binary masks whose connected components are the objects; same names as the images")
    train.add_argument("--out", required=True, type=_path,
                       help="model file to write (.safetensors); rewritten whenever validation improves")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the --out file if it exists (default: refuse; never the --init model)")
    train.add_argument("--init", default="scratch", type=_path,
                       help="start from 'scratch', 'closest' (the embedded model these images look most like, "
                       "judged from its own predictions of a few of them), an embedded model's name or a model file "
                       "(default: scratch)")
    train.add_argument("--train-norm", action="store_true",
                       help="with --init: re-estimate the batch-norm statistics from these images (default: keep "
                       "the model's, which suits a few images; re-estimate when continuing on many)")
    train.add_argument("--epochs", type=_positive_int,
                       help="passes over the data (default: 50, or until the time budget when --max-minutes is given)")
    train.add_argument("--max-minutes", type=_positive_float, help="time budget; training keeps the best model so far")
    train.add_argument("--steps-per-epoch", type=_positive_int,
                       help="optimizer steps between validations (default: one pass over the annotated pixels)")
    train.add_argument("--patch-size", type=_positive_int, default=256, help="training patch edge in pixels (default: 256)")
    train.add_argument("--batch-size", type=_positive_int, default=4, help="patches per step (default: 4)")
    train.add_argument("--learning-rate", type=_positive_float,
                       help="optimizer step size (default: 0.001 from scratch; with --init 0.0005, or 0.0002 when "
                       "fewer than 4 images leave none whole for validation or when the starting model already finds "
                       "half the painted objects)")
    train.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                       help="learning rate: constant (default), or cosine decay over the epochs or time budget")
    train.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                       help="adam (default) or sgd with momentum 0.99 as in the U-Net paper")
    train.add_argument("--w0", type=_non_negative_float, default=BORDER_W0,
                       help=f"height of the border weight between touching objects (default: {BORDER_W0:g})")
    train.add_argument("--sigma", type=_positive_float, default=BORDER_SIGMA,
                       help=f"width of the border weight in pixels (default: {BORDER_SIGMA:g})")
    train.add_argument("--dice-weight", type=_non_negative_float, default=0.0, help="add a Dice loss with this weight (default: 0, off)")
    train.add_argument("--val-fraction", type=_fraction, default=0.1,
                       help="share of images kept for validation (default: 0.1; fine-tuning holds out at least one "
                            "of 4 or more; ignored with --val-images)")
    train.add_argument("--val-images", type=_path, help="images to validate on, never trained on (TIFF file, folder or glob)")
    train.add_argument("--val-labels", type=_path, help="labels of --val-images, same names")
    train.add_argument("--patience", type=_positive_int, help="stop after this many validations without improvement")
    train.add_argument("--intensity-range", type=_intensity, nargs=2, metavar=("LOW", "HIGH"),
                       help="map these intensities to 0 and 1 in every plane of the training and validation images, "
                       "instead of each plane's percentiles: the range their kind is predicted with (predict "
                       "--intensity-range), so that the model learns the planes as it will see them (default: each "
                       "plane's percentiles)")
    train.add_argument("--augment", type=_non_negative_float, default=1.0, help="augmentation strength, 0 = off (default: 1)")
    # The defaults are the core's (core.model.scratch_network_config), which depend on the
    # device; importing it here would import torch for every command, --help included.
    train.add_argument("--depth", type=_positive_int,
                       help="poolings of a new network (default: 4, or 3 when training on a CPU)")
    train.add_argument("--base-width", type=_positive_int,
                       help="channels of a new network's first level (default: 32, or 16 when training on a CPU)")
    train.add_argument("--classes", type=int, choices=(2, 3), default=2,
                       help="2: background/foreground with gaps between touching objects (paper); "
                       "3: background/interior/boundary (default: 2)")
    train.add_argument("--padding", choices=("same", "valid"), default="same",
                       help="convolution padding of a new network (default: same)")
    train.add_argument("--pixel-size", type=_positive_float, nargs=2, metavar=("Y", "X"),
                       help="pixel size of the images (default: read from the TIFFs)")
    train.add_argument("--diameter", type=_positive_float, metavar="PX",
                       help="with --init: typical object diameter in the images, in pixels; they are rescaled so that "
                       "objects match the model's, and the new model keeps the model's object size; for z-stacks, "
                       "the objects' widest (default: from the pixel sizes when both are known, else none: the new "
                       "model records the annotated objects' median size)")
    train.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps")
    train.add_argument("--float32", action="store_true",
                       help="train and validate in float32 (default: mixed precision where the device is faster with "
                       "it: float16 on CUDA GPUs, bfloat16 on CPUs with Intel AMX, about twice as many steps a minute)")
    train.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    train.set_defaults(handler=_train)

    predict = commands.add_parser(
        "predict", help="segment TIFF images and stacks",
        description="Segment TIFF images or stacks plane by plane, streaming: writes one compressed label TIFF "
        "per input, same name, axes, page order and pixel size. Outputs are renamed into place when complete; "
        "a rerun skips the inputs whose output exists. Unreadable inputs are reported and skipped (exit status 1).",
    )
    predict.add_argument("--model", required=True, type=_path, help="embedded model name or model file")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", type=_path,
                         help="TIFF files, folders or glob patterns (single images, stacks, ImageJ hyperstacks, "
                         "OME-TIFF, BigTIFF)")
    predict.add_argument("--out", required=True, type=_path, help="output folder (created if needed; never an input's file)")
    predict.add_argument("--tile-size", type=_positive_int,
                         help="largest tile edge in pixels (default: 1024 on a GPU; on a CPU up to 2048, as memory "
                         "allows, so that planes up to 2048x2048 go through the network in one pass; at least 4 "
                         "times the network's context, 448 for the embedded models)")
    predict.add_argument("--batch-size", type=_positive_int,
                         help="most tiles per forward pass (default: 1 on a CPU, 4 on a GPU, fewer when its memory "
                         "is short)")
    predict.add_argument("--threshold", type=_probability,
                         help="probability threshold of the post-processing; higher separates touching objects "
                         "more, lower keeps fainter ones or, under 0.5 with a two-class model, wider outlines "
                         "(default: the model's own, chosen on its validation images)")
    predict.add_argument("--min-size", type=_non_negative_int, default=DEFAULT_SETTINGS.min_size,
                         help=f"smallest object kept, in pixels (default: {DEFAULT_SETTINGS.min_size})")
    predict.add_argument("--diameter", type=_diameter, metavar="PIXELS|auto",
                         help="typical object diameter in the images, in pixels, or 'auto' to estimate it from each "
                         "file's first plane (with --3d: from its objects in 3D); planes are rescaled so objects "
                         "match the model's (default: the files' pixel size when the model records one, else 'auto' "
                         "with --3d and no rescaling without)")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation: average the predictions of each plane turned and mirrored "
                         "in all eight ways, as the U-Net paper did; more accurate outlines for 8x the time "
                         "(default: off)")
    predict.add_argument("--intensity-range", type=_intensity, nargs=2, metavar=("LOW", "HIGH"),
                         help="map these intensities to 0 and 1 in every plane, instead of each plane's own 1st and "
                         "99.8th percentiles: for stacks whose planes must keep their relative brightness, so that "
                         "empty fields or out-of-focus planes are not stretched until their noise looks like "
                         "objects; choose it so that the objects span about the range, as the contrast limits of a "
                         "viewer would (default: each plane's percentiles)")
    predict.add_argument("--channel", type=_non_negative_int, metavar="N",
                         help="segment only channel N (0 is the first, Fiji's C1) of files with several: an ImageJ or "
                         "OME C axis, or colour samples (default: each channel, one after the other; colours "
                         "averaged to gray)")
    predict.add_argument("--3d", dest="volume", action="store_true",
                         help="label z-stacks in 3D: each object keeps one label through the planes it spans; a T axis "
                         "gives one volume per time point, and a time-lapse without Z stays plane by plane (default: "
                         "each plane on its own)")
    predict.add_argument("--voxel-size", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"),
                         help="with --3d, the z step and pixel size in one unit, for the stack's proportions "
                         "(default: each file's own; a file that records no z step is taken as isotropic, with a "
                         "warning)")
    predict.add_argument("--views", choices=VIEWS,
                         help="with --3d, how a volume is seen: xy through its planes alone; xyz through its planes "
                         "and its XZ and YZ side views, averaged (more accurate where objects are crowded or "
                         "noisy, for about 1 + 2 x the z step in pixels times the network's work; the volume "
                         "labelled whole); auto: xyz where the volume is labelled whole in memory, else xy "
                         "(default: auto)")
    predict.add_argument("--probability", action="store_true", help="also write the foreground probability (NAME_probability.tif)")
    predict.add_argument("--overwrite", action="store_true", help="segment again the inputs whose output exists (default: skip them)")
    predict.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps")
    predict.add_argument("--float32", action="store_true",
                         help="run the network in float32 (default: mixed precision where the device is faster "
                         "with it: float16 on CUDA GPUs, bfloat16 on CPUs with Intel AMX, about twice as fast; "
                         "probabilities that differ in the second or third digit, which moves a few outlines)")
    predict.add_argument("--compile", action="store_true",
                         help="compile the network first (torch.compile; on a CPU it needs a C++ compiler): about 8 %% "
                         "faster on 1024x1024 planes after 10-25 s per image size, for long stacks and batches "
                         "(default: off)")
    predict.add_argument("--max-memory", type=_positive_float, metavar="GB",
                         help="plan tiles, and 3D labelling's chunks and blocks, for at most this much memory in all, "
                         "as on a shared machine (default: what is free, under the limit of a container or cluster "
                         "job)")
    cluster = predict.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the planes on an existing Dask cluster, e.g. tcp://host:8786 (needs napari-unet-loop[dask])")
    cluster.add_argument("--workers", type=_positive_int, metavar="N",
                         help="start a local Dask cluster of N worker processes for the planes (needs napari-unet-loop[dask])")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="compare predicted labels with ground truth",
        description="Pixel IoU/F1, instance average precision (TP/(TP+FP+FN), one-to-one matching) "
        "at IoU 0.5 to 0.95 pooled and per-image mean, and the ISBI 2012 pixel error and "
        "foreground-restricted Rand score V_rand; files pair by name.",
    )
    evaluate.add_argument("--pred", required=True, type=_path, help="folder, glob or file of predicted label TIFFs")
    evaluate.add_argument("--gt", required=True, type=_path, help="folder, glob or file of ground-truth label TIFFs")
    evaluate.add_argument("--json", type=_path, help="write every figure (per threshold, per image) to this JSON file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists (default: refuse)")
    evaluate.add_argument("--3d", dest="volume", action="store_true",
                          help="score z-stacks as volumes: objects matched by their 3D IoU, as predict --3d numbers "
                          "them (default: each plane on its own)")
    evaluate.set_defaults(handler=_evaluate)

    models = commands.add_parser(
        "models", help="list the embedded models",
        description="List the embedded models: what they segment, their training data, pixel size and "
        "object diameter, and their figures on held-out validation images.",
    )
    models.add_argument("--json", action="store_true", help="print the models' full metadata as JSON")
    models.set_defaults(handler=_models)

    export = commands.add_parser(
        "export", help="write a model as a bioimage.io model package",
        description="Write a model as a bioimage.io model package (a zip, spec format 0.5) for the BioImage Model "
        "Zoo and the tools that read it: PyTorch and TorchScript weights, the percentile scaling, the class "
        "probabilities as output, test tensors and a README that describes what the spec cannot (the "
        "post-processing into objects, the object size). Needs napari-unet-loop[bioimageio]. napari-unet loads the "
        "package back (--model PACKAGE.zip) as the model it was exported from.",
    )
    export.add_argument("model", type=_path, metavar="MODEL", help="embedded model name or model file (.safetensors)")
    export.add_argument("out", type=_path, metavar="OUT.zip", help="package to write (.zip)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT.zip if it exists (default: refuse)")
    export.set_defaults(handler=_export)

    sample = commands.add_parser(
        "sample", help="write generated nuclei images and labels to try things out",
        description="Write generated fluorescence-like nuclei (images/ and labels/) for a first try.",
    )
    sample.add_argument("--out", required=True, type=_path, help="folder to write images/ and labels/ into")
    sample.add_argument("--count", type=_positive_int, default=8, help="number of images (default: 8)")
    sample.add_argument("--size", type=_sample_size, default=256, help="image edge in pixels, 32 to 4096 (default: 256)")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace sample files that exist and differ (default: refuse; the same files are kept)")
    sample.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    sample.set_defaults(handler=_sample)
    return parser


def _train(args) -> int:
    from .core.device import resolve_device
    from .core.errors import InputError
    from .core.model import scratch_network_config
    from .core.model_choice import CLOSEST, closest_embedded_model
    from .core.normalize import IntensityRange
    from .core.progress import run_to_end
    from .core.registry import load_model
    from .core.train import train_iter

    if (args.val_images is None) != (args.val_labels is None):
        raise InputError("--val-images and --val-labels go together")
    if args.init == "scratch" and args.train_norm:
        raise InputError("--train-norm applies when fine-tuning a model (--init NAME or PATH): a new model "
                         "learns its batch-norm statistics anyway")
    intensity_range = None if args.intensity_range is None else tuple(args.intensity_range)
    if intensity_range is not None:
        IntensityRange(*intensity_range)  # a wrong range is said before the images are read
    out = _training_output(args)
    samples, validation, pixel_size, unit = _training_samples(args, intensity_range)
    if args.init == CLOSEST:
        choice = closest_embedded_model([(sample.image, sample.labels, None) for sample in samples],
                                        device=args.device)
        print(f"{choice} is the embedded model closest to these images", file=sys.stderr)
        args.init, model = choice.name, choice.model()
    else:
        model = None if args.init == "scratch" else load_model(args.init)
    config = _training_config(args)
    network = scratch_network_config(resolve_device(args.device), depth=args.depth, base_width=args.base_width,
                                     num_classes=args.classes, padding=args.padding)
    # A new network's size depends on the device: say which one this run builds.
    origin = (f"from scratch (depth {network.depth}, base width {network.base_width})" if model is None
              else f"starting from {args.init}")
    print(f"training on {len(samples)} image(s), {origin}", file=sys.stderr)
    stop = threading.Event()
    progress = _Progress("train")
    try:
        generator = train_iter(samples, model=model, config=config, network_config=network, stop=stop,
                               pixel_size=pixel_size, pixel_unit=unit, checkpoint=out,
                               validation_samples=validation, diameter=args.diameter)
        # Ctrl-C ends training after the current step and still saves the best model so far.
        with _ctrl_c_sets(stop, "after the current step"):
            result = run_to_end(generator, _training_progress(args, progress))
    finally:
        progress.close()
    return _trained(args, result, out, stop)


def _training_output(args):
    """The model file ``train`` writes, checked before any work.

    The file is written during training (checkpoints), and must never replace an image, a
    label file, a folder or the model training starts from.
    """
    from .core.errors import InputError, ModelFileError
    from .core.model_choice import CLOSEST
    from .core.modelfile import model_file_path
    from .core.registry import model_source

    try:
        out = model_file_path(args.out)
    except ModelFileError as error:
        raise InputError(f"--out names the model file to write: {error}") from None
    if out.exists():
        start = None if args.init in ("scratch", CLOSEST) else model_source(args.init)
        if start is not None and start.samefile(out):
            raise InputError(f"{out} is the model training starts from (--init); write the new model to another file")
        if not args.overwrite:
            raise InputError(f"{out} exists; choose another file name, or add --overwrite to replace it")
    return out


def _training_samples(args, intensity_range) -> tuple:
    """The training and validation samples of ``train``, and the one pixel size and unit they share."""
    from .core.errors import InputError
    from .core.io import collect_tiffs, pair_by_name, read_tiff
    from .core.train import TrainingSample
    from .core.units import common_pixel_size

    calibrated = []  # (name, pixel size, unit) of the images whose files record a pixel size

    def read_samples(images: str, labels: str) -> list[TrainingSample]:
        samples = []
        for image_path, labels_path in pair_by_name(collect_tiffs(images), collect_tiffs(labels)):
            if image_path.resolve() == labels_path.resolve():
                raise InputError(f"{image_path} is given as both image and labels; --labels names the label files")
            image, info = read_tiff(image_path)
            samples.append(TrainingSample(image, read_tiff(labels_path)[0], name=image_path.name,
                                          intensity_range=intensity_range))
            # A file without a pixel size takes the others': only the known ones must agree.
            if info.pixel_size is not None:
                calibrated.append((image_path.name, info.pixel_size, info.unit))
        return samples

    samples = read_samples(args.images, args.labels)
    validation = None if args.val_images is None else read_samples(args.val_images, args.val_labels)
    if args.pixel_size:  # the user's pixel size is that of every image, whatever the files say
        return samples, validation, args.pixel_size, "um"
    try:
        return samples, validation, *common_pixel_size(calibrated)
    except InputError as error:
        raise InputError(f"{error}, or give --pixel-size") from None


def _budget_only(args) -> bool:
    """Whether the time budget alone ends training (no epoch count given)."""
    return bool(args.max_minutes and not args.epochs)


def _training_config(args):
    """The :class:`~napari_unet.core.train.TrainingConfig` of ``train``'s flags."""
    from .core.augment import AugmentConfig
    from .core.train import TrainingConfig

    return TrainingConfig(
        epochs=args.epochs or (10**9 if _budget_only(args) else 50), max_minutes=args.max_minutes,
        steps_per_epoch=args.steps_per_epoch,
        patch_size=args.patch_size, batch_size=args.batch_size, learning_rate=args.learning_rate,
        schedule=args.schedule, optimizer=args.optimizer, w0=args.w0, sigma=args.sigma, dice_weight=args.dice_weight,
        val_fraction=args.val_fraction, patience=args.patience, seed=args.seed, device=args.device,
        amp=not args.float32, augment=AugmentConfig(strength=args.augment),
        freeze_norm=False if args.train_norm else None,
    )


def _training_progress(args, progress: _Progress):
    """What ``train`` shows of each step: the bar on a terminal, the validations otherwise."""

    def show(update):
        note = f"loss {update.loss:.4f}"
        if update.best_score is not None:
            note += f" best {update.best_score:.3f}"
        if _budget_only(args):  # the bar counts seconds of the budget, not a step count that never ends
            budget = 60 * args.max_minutes
            progress.update(min(round(update.elapsed), round(budget)), round(budget), f"s, step {update.step}, {note}")
            where = f"step {update.step} ({update.elapsed:.0f} of {budget:.0f} s)"
        else:
            progress.update(update.step, update.total_steps, note)
            where = f"step {update.step}/{update.total_steps}"
        if update.validation is not None and not progress.active:
            print(f"{where} {note} val {json.dumps(_rounded(update.validation))}", file=sys.stderr)

    return show


def _trained(args, result, out, stop: threading.Event) -> int:
    """Save what ``train`` trained, say what happened, and give its exit code."""
    from .core.threads import BUSY_CPU_SHARE, busy_cpu_message

    if result.model.training["steps"] == 0:
        print(f"napari-unet: training stopped before its first step; {out} was not written", file=sys.stderr)
        return 130 if stop.is_set() else EXIT_FAILED
    path = result.model.save(out)
    if result.unchanged:
        print(f"napari-unet: {result.why_unchanged()} ({args.init}); {path} holds it unchanged", file=sys.stderr)
    if result.busy_cpu is not None and result.busy_cpu >= BUSY_CPU_SHARE:
        print(f"napari-unet: {busy_cpu_message(result.busy_cpu)}", file=sys.stderr)
    print(f"napari-unet: {_training_summary(result)}; model written to {path}", file=sys.stderr)
    last = result.history[-1] if result.history else {}
    print(json.dumps({"model": str(path), "stop_reason": result.stop_reason, "steps": result.model.training["steps"],
                      "unchanged": result.unchanged, "threshold": result.model.threshold,
                      "last_validation": _rounded(last)}))
    return 130 if result.stop_reason == "stopped" else 0  # Ctrl-C: the model is saved, the run was cut short


def _training_summary(result) -> str:
    """What a training run did, in one line: steps, time, why it ended and its best validation."""
    validated = [record for record in result.history if record.get("score") is not None]
    seconds = result.history[-1]["seconds"] if result.history else 0.0
    summary = f"{result.model.training['steps']} steps in {seconds:.0f} s ({result.stop_reason})"
    if validated:
        best = max(validated, key=lambda record: record["score"])
        summary += f", best validation {'AP50' if 'ap50' in best else 'pixel IoU'} {best['score']:.3f}"
    return summary


def _rounded(values: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


def _diameter(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of pixels or 'auto', not {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels or 'auto', not {text}")
    return value


def _predict(args) -> int:
    from contextlib import nullcontext

    from .core.batch import predict_files_iter
    from .core.device import resolve_device
    from .core.errors import InputError
    from .core.io import collect_tiffs
    from .core.progress import run_to_end
    from .core.registry import load_model

    resolve_device(args.device)  # an unavailable device is one usage error, not a failure per file
    if args.max_memory:
        from .core.memory import limit_memory

        limit_memory(max(1, int(args.max_memory * 2**30)))  # a limit under a byte is still a limit
    if args.voxel_size and not args.volume:
        raise InputError("--voxel-size gives the proportions of z-stacks labelled in 3D; add --3d")
    model = load_model(args.model)
    for spec in args.inputs:
        collect_tiffs(spec)  # each input must match a file
    # The engine expands them itself: a file given twice (a folder and a glob) is taken once,
    # and a folder or pattern above the output folder leaves out an earlier run's outputs.
    files = list(args.inputs)
    settings = PredictionSettings(
        tile_size=args.tile_size, batch_size=args.batch_size, threshold=args.threshold, min_size=args.min_size,
        device=args.device, amp=not args.float32, compile_network=args.compile, test_time_augmentation=args.tta,
        intensity_range=args.intensity_range, views=args.views or DEFAULT_SETTINGS.views)
    if args.views and not args.volume:
        raise InputError("--views says how z-stacks labelled in 3D are seen; add --3d")
    if args.scheduler or args.workers:
        from .core.distributed import dask_executor

        if not args.verbose:
            _quiet_dask_logs()
        cluster = dask_executor(scheduler=args.scheduler, workers=args.workers)
    else:
        cluster = nullcontext()
    progress = _Progress("predict")
    start = time.monotonic()

    def show(update):
        rate = update.planes_done / max(time.monotonic() - start, 1e-9)
        plane = update.plane
        note = (f"file {update.file + 1}/{update.files} plane {min(plane.plane + 1, plane.planes)}/{plane.planes} "
                f"{rate:.2f} planes/s {update.path.name}")
        progress.update(update.planes_done, update.planes_total, note)

    stop = threading.Event()
    try:
        with cluster as executor, _ctrl_c_sets(stop, "after the current tiles; finished files stay"):
            result = run_to_end(predict_files_iter(model, files, args.out, probability=args.probability,
                                                   overwrite=args.overwrite, executor=executor, stop=stop,
                                                   channel=args.channel, volume=args.volume,
                                                   z_scale=_z_scale(args.voxel_size), settings=settings,
                                                   diameter=args.diameter), show)
    finally:
        progress.close()
    seconds = time.monotonic() - start
    print(_results_table(result.files))
    planes = sum(item.planes for item in result.files)
    print(f"{planes} plane(s) in {seconds:.1f} s ({planes / max(seconds, 1e-9):.2f} planes/s); "
          f"{len(result.skipped)} skipped", file=sys.stderr)
    if result.failed:
        for item in result.failed:
            where = "" if str(item.path) in item.error else f"{item.path}: "
            print(f"napari-unet: error: {where}{item.error}", file=sys.stderr)
        print(f"napari-unet: {len(result.failed)} of {len(result.files)} input(s) failed", file=sys.stderr)
    if result.cancelled:
        print("napari-unet: interrupted; the same command goes on with the files not listed", file=sys.stderr)
        return 130
    return EXIT_FAILED if result.failed else 0


def _z_scale(voxel_size) -> float | None:
    """The z step in pixels of a ``--voxel-size Z Y X`` (None when not given)."""
    if not voxel_size:
        return None
    z_step, _, pixel_width = voxel_size
    return z_step / pixel_width


@contextlib.contextmanager
def _ctrl_c_sets(stop: threading.Event, when: str):
    """Within the block, Ctrl-C sets ``stop`` (the work ends ``when``); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stopping(*_):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"\nnapari-unet: stopping {when} (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, stopping)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_dask_logs() -> None:
    """Keep Dask's account of its cluster's life (dozens of lines a run) for -v."""
    try:
        import distributed  # noqa: F401 - it sets its loggers' levels when imported: quiet them after that
    except ImportError:
        return  # dask_executor says what to install
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "dask"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _results_table(files) -> str:
    """One line per input of a batch; the diameter and scale columns only when some input was rescaled."""
    diameters = any(item.diameter is not None for item in files)
    scales = any(item.scale != 1.0 for item in files)
    header = ["file", "planes", "objects"] + ["diameter"] * diameters + ["scale"] * scales + ["seconds", "output"]
    rows = [header]
    for item in files:
        if item.error or item.skipped:
            cells = [item.path.name, "-", "-"] + ["-"] * (diameters + scales)
            cells += [f"{item.seconds:.1f}" if item.error else "-",
                      "FAILED" if item.error else f"{item.output} (exists, skipped)"]
        else:
            cells = [item.path.name, str(item.planes), str(item.objects)]
            if diameters:
                cells.append("-" if item.diameter is None else f"{item.diameter:.1f}")
            if scales:
                cells.append(f"{item.scale:.2f}")
            cells += [f"{item.seconds:.1f}", str(item.output)]
        rows.append(cells)
    numbers = len(header) - 2  # the columns right-aligned: all but the file and the output
    widths = [max(len(row[column]) for row in rows) for column in range(numbers + 1)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:])]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    return "\n".join(lines)


def _evaluate(args) -> int:
    import numpy as np

    from .core.atomic import replaced_atomically, writable_folder
    from .core.errors import InputError
    from .core.io import collect_tiffs, pair_by_name, read_tiff
    from .core.metrics import average_precision, isbi_scores, label_volumes, pixel_scores

    if args.json and Path(args.json).suffix.lower() != ".json":
        raise InputError(f"--json names the JSON file to write, ending in .json, not {args.json}")
    if args.json:
        # Said before the files are read and scored.
        if Path(args.json).exists() and not args.overwrite:
            raise InputError(f"{args.json} exists; choose another --json file or add --overwrite")
        writable_folder(Path(args.json).parent)
    pairs = pair_by_name(collect_tiffs(args.gt), collect_tiffs(args.pred), "ground-truth file(s) have no prediction")
    truths, predictions, truth_volumes, prediction_volumes = [], [], [], []
    for truth_path, prediction_path in pairs:
        truth, prediction = read_tiff(truth_path)[0], read_tiff(prediction_path)[0]
        if truth.shape != prediction.shape:
            raise InputError(f"{prediction_path.name}: shape {prediction.shape} differs from ground truth {truth.shape}")
        if args.volume and truth.ndim < 3:
            raise InputError(f"{truth_path} is one plane (shape {truth.shape}); --3d scores z-stacks")
        truths.extend(_instance_planes(truth, truth_path, "ground truth"))
        predictions.extend(_instance_planes(prediction, prediction_path, "prediction"))
        if args.volume:
            truth_volumes.append(truth)
            prediction_volumes.append(prediction)
    pixels = pixel_scores(np.concatenate([p.ravel() for p in predictions]), np.concatenate([t.ravel() for t in truths]))
    instances = (average_precision(truth_volumes, prediction_volumes, volumes=True) if args.volume
                 else average_precision(truths, predictions))
    result = {
        "images": len(pairs),
        "planes": len(truths),
        **({"volumes": len(label_volumes(truth_volumes))} if args.volume else {}),
        "pixel_iou": pixels["iou"],
        "pixel_f1": pixels["f1"],
        **instances,
        "mean_ap_0.5_0.95": float(np.mean(instances["ap_mean"])),
        **isbi_scores(truths, predictions),
    }
    print(_evaluation_table(result))
    if args.json:
        with replaced_atomically(args.json) as temporary:
            temporary.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _evaluation_table(result: dict) -> str:
    """The headline figures of an evaluation, one per line, aligned."""
    thresholds = result["thresholds"]
    rows = [
        ("AP at IoU 0.5 (pooled)", f"{result['ap_pooled'][thresholds.index(0.5)]:.3f}"),
        ("AP at IoU 0.75 (pooled)", f"{result['ap_pooled'][thresholds.index(0.75)]:.3f}"),
        ("mean AP, IoU 0.5-0.95", f"{result['mean_ap_0.5_0.95']:.3f}"),
        ("objects: true / predicted", f"{result['tp'][0] + result['fn'][0]} / {result['tp'][0] + result['fp'][0]}"),
        ("pixel IoU", f"{result['pixel_iou']:.3f}"),
        ("pixel F1", f"{result['pixel_f1']:.3f}"),
        ("pixel error (ISBI)", f"{result['pixel_error']:.4f}"),
        ("V_rand (ISBI)", f"{result['v_rand']:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    scored = f"{result['volumes']} volume(s), scored in 3D" if "volumes" in result else f"{result['planes']} plane(s)"
    lines = [f"{scored} of {result['images']} image(s)"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _instance_planes(labels, path: Path, what: str) -> list:
    """The planes of a label image as the metrics score them, refused with the file's name."""
    from .core.errors import InputError, InputWarning
    from .core.metrics import label_planes
    from .core.targets import intensity_image_warning

    try:
        planes = label_planes(labels)
    except InputError as error:
        raise InputError(f"{path} ({what}): {error}") from None
    if (looks_wrong := intensity_image_warning(labels)) is not None:
        warnings.warn(f"{path} ({what}): {looks_wrong}", InputWarning, stacklevel=2)
    return planes


def _models(args) -> int:
    from .core.registry import embedded_models

    models = embedded_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no embedded models in this version; train one with 'napari-unet train'")
    for name, metadata in models.items():
        print(_describe_model(name, metadata))
    return 0


def _describe_model(name: str, metadata: dict) -> str:
    """A few lines for people: what the model segments, what it learnt from, how well it did."""
    from .core.registry import COLOUR_MODELS

    network = metadata.get("network", {})
    lines = [f"{name}: {metadata.get('description') or 'no description'}"]
    if metadata.get("training_data"):
        lines.append(f"  training data:   {metadata['training_data']}")
    scale = []
    if metadata.get("pixel_size"):
        size = metadata["pixel_size"]
        scale.append(f"pixel size {size[0]:g} x {size[1]:g} {metadata.get('pixel_unit') or ''}".rstrip())
    if metadata.get("object_diameter"):
        scale.append(f"typical object diameter {metadata['object_diameter']:.1f} px")
    if scale:
        lines.append(f"  scale:           {', '.join(scale)}")
    if network:
        lines.append(f"  network:         depth {network.get('depth')}, base width {network.get('base_width')}, "
                     f"{network.get('in_channels')} channel(s) in, {network.get('num_classes')} classes")
    lines.append(f"  threshold:       {metadata.get('threshold', 0.5):g} (post-processing, unless --threshold)")
    if name in COLOUR_MODELS:
        lines.append(f"  colour images:   segmented with {COLOUR_MODELS[name]} (RGB stained tissue)")
    evaluation = metadata.get("evaluation") or {}
    # Figures measured with test-time augmentation (scripts/train_models.py) get a line of their own.
    plain = {key: value for key, value in evaluation.items() if not key.startswith("tta_")}
    averaged = {key[len("tta_"):]: value for key, value in evaluation.items() if key.startswith("tta_")}
    if plain:
        lines.append(f"  validation:      {', '.join(f'{key} {value}' for key, value in plain.items())}")
    if averaged:
        lines.append(f"  with --tta:      {', '.join(f'{key} {value}' for key, value in averaged.items())}")
    return "\n".join(lines)


def _export(args) -> int:
    from .core.bioimageio import export_bioimageio, package_path
    from .core.errors import InputError
    from .core.registry import COLOUR_MODELS

    out = package_path(args.out)
    if out.exists() and not args.overwrite:  # said before the model is loaded and its package made
        raise InputError(f"{out} exists; choose another file name, or add --overwrite to replace it")
    path = export_bioimageio(args.model, out, overwrite=True)
    print(f"{args.model} written to {path} as a bioimage.io model package")
    if args.model in COLOUR_MODELS:  # the package holds one network: colour images need the other one
        print(f"napari-unet: {args.model} hands colour (RGB) images to {COLOUR_MODELS[args.model]}, which this "
              f"package does not hold; export {COLOUR_MODELS[args.model]} too for stained tissue", file=sys.stderr)
    return 0


def _sample(args) -> int:
    from .core.errors import InputError
    from .core.io import write_tiff
    from .core.synthetic import synthetic_nuclei

    out = Path(args.out)
    files = {}  # path: the array it holds
    for index in range(args.count):
        image, labels = synthetic_nuclei((args.size, args.size), count=max(4, args.size**2 // 2200), seed=args.seed + index)
        name = f"nuclei_{index:03d}.tif"
        files[out / "images" / name], files[out / "labels" / name] = image, labels.astype("uint16")
    # Files that already hold the same sample (a second run of the quick start) are kept.
    differing = [path for path, array in files.items() if path.exists() and not _holds(path, array)]
    if differing and not args.overwrite:
        raise InputError(f"{differing[0]} exists with other content (and {len(differing) - 1} more); choose another "
                         "--out or add --overwrite")
    for path, array in files.items():
        if path in differing or not path.exists():
            write_tiff(path, array)
    print(f"{args.count} images in {out / 'images'} and their labels in {out / 'labels'}")
    return 0


def _holds(path: Path, array) -> bool:
    """Whether the TIFF file ``path`` holds exactly ``array`` (False for any file it cannot read)."""
    import numpy as np
    import tifffile

    try:
        found = tifffile.imread(path)
    except Exception:  # not a TIFF, truncated: not the sample, whatever it is
        return False
    return found.shape == array.shape and found.dtype == array.dtype and bool(np.array_equal(found, array))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not args.verbose:
        # tifffile logs the damage it recovers from, which the core collects and reports
        # in one line (so its records must still be made: no level is raised here); it
        # reaches the screen only with -v, as Dask's logs (_quiet_dask_logs).
        tifffile_log = logging.getLogger("tifffile")
        tifffile_log.propagate = False
        if not any(isinstance(handler, logging.NullHandler) for handler in tifffile_log.handlers):
            tifffile_log.addHandler(logging.NullHandler())
    warnings.showwarning = lambda message, category, *rest, **kw: print(f"napari-unet: warning: {message}", file=sys.stderr)
    from .core.errors import ClusterError, NapariUnetError, WriteError

    try:
        return args.handler(args)
    except (WriteError, ClusterError) as error:  # work begun could not be finished: a failure, not a usage mistake
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except NapariUnetError as error:
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        print(f"napari-unet: error: {_system_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as error:
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except MemoryError:
        print("napari-unet: error: out of memory; use smaller images, patches, tiles or batches", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of the output went away (`napari-unet models | head`): nothing to say.
        # Python would report the pipe again when flushing stdout at exit; point it nowhere.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # an input/output error, a disk gone
        print(f"napari-unet: error: {_system_error(error)}", file=sys.stderr)
        return EXIT_FAILED


def _system_error(error: OSError) -> str:
    """An error of the operating system in one line: the file, then what the system says of it."""
    from .core.errors import system_reason

    return f"{error.filename}: {system_reason(error)}" if error.filename else system_reason(error)


if __name__ == "__main__":
    sys.exit(main())
