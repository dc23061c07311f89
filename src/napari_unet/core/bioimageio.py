"""bioimage.io model packages: a napari-unet model written as one, and read back.

A package (spec format 0.5, a zip) describes what the spec can say of a model: the
network's weights twice, as a PyTorch state dict with its architecture's source file and
as TorchScript; the input, a one-channel (or multi-channel) image scaled by percentiles
(the spec's ``scale_range``); the output, the class probabilities; test tensors that the
network turns one into the other; a README for people. The instance post-processing
that turns probabilities into labels, the rescaling to the model's object size and the
colour deconvolution of stained tissue have no place in the spec: the README describes
them. The model's own metadata (:func:`~napari_unet.core.modelfile.model_metadata`)
goes into the package's ``config`` under ``napari_unet``, so that :func:`load_package`
rebuilds the very same :class:`~napari_unet.core.bundle.Model`.

The ``bioimageio.spec`` package (installed with ``napari-unet-loop[bioimageio]``) writes and
checks packages; it is imported only here, when a package is written or read.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from . import bioimageio_network
from .atomic import made_folder, replaced_atomically
from .bundle import Model
from .errors import InputError, ModelFileError
from .modelfile import MODEL_SUFFIX, check_metadata, model_from_metadata, model_metadata
from .normalize import haematoxylin
from .postprocess import growth_distance
from .synthetic import synthetic_nuclei
from .units import length_unit

__all__ = ["CONFIG_KEY", "PACKAGE_SUFFIX", "export_bioimageio", "is_package", "load_package", "package_path"]

#: The suffix of a package: the spec's zip.
PACKAGE_SUFFIX = ".zip"

#: Where in a package's ``config`` the model's napari-unet metadata lies.
CONFIG_KEY = "napari_unet"

#: Names the spec gives the description inside a package (the first two are current).
_DESCRIPTION_NAMES = ("bioimageio.yaml", "rdf.yaml")

#: Names of the files inside a package.
_ARCHITECTURE = "unet_probabilities.py"
_STATE_DICT = "weights.pt"
_TORCHSCRIPT = "weights_torchscript.pt"
_TEST_INPUT = "test_input.npy"
_TEST_OUTPUT = "test_output.npy"
_SAMPLE_INPUT = "sample_input.tif"
_SAMPLE_OUTPUT = "sample_output.tif"
_COVER = "cover.png"
_README = "README.md"

#: Edge of the test image, in pixels (a valid-padding network's input is a little larger).
TEST_SIZE = 256

#: Names of the output channels, by number of classes: our targets' classes.
_CLASSES = {2: ["background", "foreground"], 3: ["background", "interior", "boundary"]}

#: Licence of the weights a package states unless told otherwise (an SPDX identifier).
DEFAULT_LICENSE = "MIT"

#: bioimage.io tags of the embedded models (modality and content), the others' being unknown.
_EMBEDDED_TAGS = {
    "nuclei": ["fluorescence-light-microscopy", "nuclei"],
    "nuclei-he": ["transmission-light-microscopy", "whole-slide-imaging", "nuclei", "tissue"],
    "cells": ["transmission-light-microscopy", "cells"],
    "em-neurites": ["electron-microscopy", "cell-membrane"],
}

#: Space units of the spec (OME-Zarr names), by our unit symbols (core.units).
_SPACE_UNITS = {"pm": "picometer", "angstrom": "angstrom", "nm": "nanometer", "um": "micrometer",
                "mm": "millimeter", "cm": "centimeter", "m": "meter"}

_MISSING_SPEC = ("bioimage.io packages need the bioimageio.core package: pip install 'napari-unet-loop[bioimageio]' "
                 "(or pip install bioimageio.core)")


def package_path(path: str | os.PathLike) -> Path:
    """The file a package given ``path`` is written to: ``.zip`` appended when it has no suffix.

    Raises:
        InputError: If ``path`` is a folder or ends in another suffix: a package written
            under another name could replace an image or a model file.
    """
    path = Path(path).expanduser()
    if path.name.lower() == PACKAGE_SUFFIX:
        raise InputError(f"give the package a name before {PACKAGE_SUFFIX}, as in model{PACKAGE_SUFFIX}")
    if path.suffix and path.suffix.lower() != PACKAGE_SUFFIX:
        raise InputError(f"a bioimage.io package is a zip file: give it a name ending in {PACKAGE_SUFFIX}, "
                         f"not {path.name}")
    if path.is_dir() or path.with_suffix(PACKAGE_SUFFIX).is_dir():
        raise InputError(f"{path} is a folder; give the package's file name")
    return path if path.suffix else path.with_suffix(PACKAGE_SUFFIX)


def export_bioimageio(model: Model | str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False,
                      license: str = DEFAULT_LICENSE) -> Path:
    """Write ``model`` as a bioimage.io model package (spec format 0.5), atomically.

    The package is validated by ``bioimageio.spec`` as it is written (the spec's
    structure and every file's checksum); ``bioimageio.core.test_description`` also runs
    its test input through both weight formats and compares with its test output.

    Args:
        model: The model, or an embedded model's name or a model file's path. A model
            that hands colour images to another (the embedded ``nuclei``) is written
            alone: export the colour model (``nuclei-he``) as a package of its own.
        path: The zip file to write (``.zip`` appended when it has no suffix).
        overwrite: Replace ``path`` if it exists.
        license: SPDX identifier of the licence of the weights.

    Returns:
        The path written.

    Raises:
        InputError: If ``path`` is a folder, ends in another suffix or exists (without
            ``overwrite``), or ``bioimageio.spec`` is not installed.
        ModelFileError: If ``model`` names no usable model.
        WriteError: If the file cannot be written.
    """
    from .registry import as_model

    path = package_path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; choose another file name, or replace it (overwrite=True)")
    spec = _spec()
    model = as_model(model)
    made_folder(path.parent)
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as scratch:
        folder = Path(scratch)
        description = _description(model, folder, license)
        # Written whole in the scratch folder (the spec's writer reads the zip back to
        # validate it, and names it by its suffix), then copied over the target at once.
        written = spec.save_bioimageio_package(description, output_path=folder / "package.zip")
        with replaced_atomically(path) as temporary:
            shutil.copyfile(written, temporary)
    return path


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip file holding a bioimage.io description (ours or another's)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return _description_name(archive.namelist()) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def load_package(path: str | os.PathLike) -> Model:
    """The model of a bioimage.io package that napari-unet wrote (:func:`export_bioimageio`).

    The model is rebuilt from the package's ``config["napari_unet"]`` and its PyTorch
    state dict, which is read as tensors only (``torch.load(weights_only=True)``): a
    package can hold no code that runs here. The package is validated first, checksums
    included, so that a damaged or altered file is refused.

    Raises:
        ModelFileError: If the file is not a bioimage.io package, is damaged, or was not
            written by napari-unet (a package of another tool holds no metadata to
            rebuild a napari-unet model from).
    """
    import torch

    path = Path(path)
    if not is_package(path):
        raise ModelFileError(f"{path} is not a bioimage.io model package (a zip file with a bioimageio.yaml); "
                             f"napari-unet loads its own model files ({MODEL_SUFFIX}) and the packages it exported")
    try:
        spec = _spec()
    except InputError as error:
        raise ModelFileError(f"{path} is a bioimage.io package; {error}") from None
    # Validated with its files' checksums: a damaged or altered file is refused here.
    try:
        description = spec.load_description(path, perform_io_checks=True)
    except Exception as error:  # the spec reports unreadable descriptions (bad YAML) with several types
        raise ModelFileError(f"{path} is not a readable bioimage.io package: {_first_line(error)}") from error
    if isinstance(description, spec.InvalidDescr):
        raise ModelFileError(f"{path} is not a valid bioimage.io model package: {_reason(description)}")
    if description.type != "model":
        raise ModelFileError(f"{path} is a bioimage.io {description.type}, not a model")
    config = description.config.model_extra or {}
    if CONFIG_KEY not in config:
        raise ModelFileError(f"{path} is a bioimage.io package of another tool; only packages that napari-unet "
                             "exported can be loaded (their config holds the napari_unet model metadata)")
    metadata = check_metadata(config[CONFIG_KEY], path, "a bioimage.io package")
    weights = description.weights.pytorch_state_dict
    if weights is None:
        raise ModelFileError(f"{path} is damaged: it holds no pytorch_state_dict weights")
    with zipfile.ZipFile(path) as archive:
        name = Path(str(weights.source)).name
        try:
            data = archive.read(name)
        except KeyError:
            raise ModelFileError(f"{path} is damaged: its weights file {name} is missing") from None
    try:
        # Tensors only: a pickle that holds anything else is refused, never run.
        tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and torch report damage with several types
        raise ModelFileError(f"{path} is damaged or unsafe: its weights cannot be read as tensors alone, and "
                             "napari-unet runs no code from a package") from error
    if not isinstance(tensors, dict) or not all(isinstance(value, torch.Tensor) for value in tensors.values()):
        raise ModelFileError(f"{path} is damaged: its weights are not a state dict")
    return model_from_metadata(metadata, tensors, path)


# -- writing ---------------------------------------------------------------------------


def _spec():
    """The ``bioimageio.spec`` module, imported on first use.

    Raises:
        InputError: If it is not installed.
    """
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise InputError(_MISSING_SPEC) from None
    return spec


def _description(model: Model, folder: Path, license: str):
    """The spec's description of ``model``, its files written into ``folder``."""
    import tifffile
    import torch
    from bioimageio.spec.model import v0_5 as bio

    config = model.config
    state = {key: value.detach().cpu().contiguous() for key, value in model.network.state_dict().items()}
    torch.save(state, folder / _STATE_DICT)
    source = Path(bioimageio_network.__file__)
    shutil.copyfile(source, folder / _ARCHITECTURE)
    network = bioimageio_network.UNetProbabilities(**config.to_dict())
    network.load_state_dict(state)
    # Scripted rather than traced: a trace keeps the sizes of its example input, the
    # script takes any size the network does. torch deprecates TorchScript in favour of
    # torch.export, which the spec does not know: its torchscript format is this.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
        torch.jit.script(network.eval()).save(str(folder / _TORCHSCRIPT))

    image = _test_image(model)
    probabilities = _probabilities(model, image)
    np.save(folder / _TEST_INPUT, image)
    np.save(folder / _TEST_OUTPUT, probabilities)
    # The same as TIFF for people and the model zoo's pages, which read no .npy.
    tifffile.imwrite(folder / _SAMPLE_INPUT, image[0])
    tifffile.imwrite(folder / _SAMPLE_OUTPUT, probabilities[0], photometric="minisblack")
    _write_cover(folder / _COVER, image, probabilities)
    (folder / _README).write_text(documentation(model, license), encoding="utf-8")

    unit = _SPACE_UNITS.get(length_unit(model.pixel_unit)) if model.pixel_size else None
    scale = {axis: (model.pixel_size[index] if unit else 1.0) for index, axis in enumerate("yx")}
    multiple = 2**config.depth
    if config.padding == "same":
        size = bio.ParameterizedSize(min=multiple, step=multiple)
        offset = 0
    else:
        smallest = model.network.valid_input_size(1)
        size = bio.ParameterizedSize(min=smallest, step=multiple)
        offset = model.network.output_size(smallest) - smallest  # the border "valid" convolutions remove
    input_id = bio.TensorId("raw")
    inputs = bio.InputTensorDescr(
        id=input_id,
        description=_input_summary(model),
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=_channel_names(model)),
            *(bio.SpaceInputAxis(id=bio.AxisId(axis), size=size, unit=unit, scale=scale[axis]) for axis in "yx"),
        ],
        test_tensor=bio.FileDescr(source=folder / _TEST_INPUT),
        sample_tensor=bio.FileDescr(source=folder / _SAMPLE_INPUT),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            # Our Normalization: each plane and channel by its own percentiles, unclipped.
            bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
                axes=[bio.AxisId("y"), bio.AxisId("x")],
                min_percentile=model.normalization.low_percentile,
                max_percentile=model.normalization.high_percentile,
            )),
            # A model that reads images inverted: 1 - x after the scaling.
            *([bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=-1.0, offset=1.0))]
              if model.normalization.invert else []),
        ],
    )
    outputs = bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        description=f"softmax probabilities of the {config.num_classes} classes; see the README for labels",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=_CLASSES[config.num_classes]),
            *(bio.SpaceOutputAxis(id=bio.AxisId(axis), unit=unit, scale=scale[axis],
                                  size=bio.SizeReference(tensor_id=input_id, axis_id=bio.AxisId(axis), offset=offset))
              for axis in "yx"),
        ],
        test_tensor=bio.FileDescr(source=folder / _TEST_OUTPUT),
        sample_tensor=bio.FileDescr(source=folder / _SAMPLE_OUTPUT),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    version = bio.Version(torch.__version__.split("+")[0])
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=folder / _STATE_DICT,
            architecture=bio.ArchitectureFromFileDescr(
                source=folder / _ARCHITECTURE, callable=bio.Identifier("UNetProbabilities"), kwargs=config.to_dict(),
            ),
            pytorch_version=version,
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=folder / _TORCHSCRIPT, pytorch_version=version, parent="pytorch_state_dict",
        ),
    )
    return bio.ModelDescr(
        name=_package_name(model),
        description=_summary(model),
        authors=[bio.Author(name="napari-unet contributors")],
        cite=[bio.CiteEntry(text="Ronneberger, Fischer and Brox: U-Net: Convolutional Networks for Biomedical "
                                 "Image Segmentation. MICCAI 2015", doi=bio.Doi("10.1007/978-3-319-24574-4_28"))],
        license=license,
        tags=["2d", "pytorch", "unet", "instance-segmentation", "semantic-segmentation", "napari-unet",
              *_EMBEDDED_TAGS.get(model.name, [])],
        documentation=bio.FileDescr(source=folder / _README),
        covers=[bio.FileDescr(source=folder / _COVER)],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config=bio.Config(**{CONFIG_KEY: model_metadata(model)}),
    )


def _test_image(model: Model) -> np.ndarray:
    """A generated image as the package's input tensor: ``(1, channels, height, width)`` float32.

    Nuclei of :mod:`~napari_unet.core.synthetic`; a haematoxylin model's is the
    haematoxylin stain of the same nuclei rendered as H&E tissue (the input the package
    describes), a model of several channels gets one image per channel.
    """
    size = model.network.valid_input_size(TEST_SIZE)
    planes = []
    for channel in range(model.config.in_channels):
        image, _ = synthetic_nuclei((size, size), count=max(4, size**2 // 2200), seed=channel)
        planes.append(_haematoxylin_of_tissue(image) if model.normalization.colour == "haematoxylin" else image)
    return np.stack(planes)[np.newaxis].astype(np.float32)


def _haematoxylin_of_tissue(image: np.ndarray) -> np.ndarray:
    """The haematoxylin stain of ``image``'s nuclei rendered as H&E-stained tissue."""
    # Beer-Lambert: the nuclei's haematoxylin and an even eosin background attenuate
    # white light by the stains' optical densities (Ruifrok and Johnston's vectors).
    nuclei = (image - image.min()) / max(float(np.ptp(image)), 1.0)
    stains = {"haematoxylin": (0.65, 0.70, 0.29), "eosin": (0.07, 0.99, 0.11)}
    density = (0.9 * nuclei[..., np.newaxis] * np.asarray(stains["haematoxylin"])
               + 0.25 * np.asarray(stains["eosin"]))
    rgb = np.clip(255 * 10.0 ** -density, 0, 255).astype(np.uint8)
    return haematoxylin(np.moveaxis(rgb, -1, 0))[0]


def _probabilities(model: Model, image: np.ndarray) -> np.ndarray:
    """Our network's class probabilities for the package's input, in float32 on the CPU."""
    import torch

    network = copy.deepcopy(model.network).cpu().float().eval()  # the caller's network keeps its mode
    with torch.no_grad():
        logits = network(torch.from_numpy(model.normalization(image)))
    return torch.softmax(logits, dim=1).numpy().astype(np.float32)


def _write_cover(path: Path, image: np.ndarray, probabilities: np.ndarray) -> None:
    """A 2:1 PNG for the model zoo: the test input beside its foreground probability."""
    import imageio.v3 as imageio

    plane = image[0, 0]
    low, high = np.percentile(plane, (1, 99.8))
    left = np.clip((plane - low) / max(high - low, 1e-6), 0, 1)
    right = 1.0 - probabilities[0, 0]  # the foreground probability
    if right.shape != left.shape:  # a valid-padding network's output is smaller: centred
        border = [(a - b) // 2 for a, b in zip(left.shape, right.shape)]
        right = np.pad(right, [(b, a - s - b) for a, s, b in zip(left.shape, right.shape, border)])
    cover = (255 * np.concatenate([left, right], axis=1)).astype(np.uint8)
    imageio.imwrite(path, cover)


# -- what the package says -------------------------------------------------------------


def _package_name(model: Model) -> str:
    """A name the spec accepts (letters, digits, ``_+- ()``; 5 to 128 characters)."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    name = "".join(character if character in allowed else " " for character in (model.name or "")).strip()
    return f"napari-unet {name}" if name else "napari-unet model"


def _summary(model: Model) -> str:
    summary = model.description or f"A U-Net with {model.config.num_classes} classes"
    return f"{summary} (napari-unet)"[:500]


def _channel_names(model: Model) -> list[str]:
    if model.normalization.colour == "haematoxylin" and model.config.in_channels == 1:
        return ["haematoxylin"]
    if model.config.in_channels == 1:
        return ["intensity"]
    return [f"channel{index}" for index in range(model.config.in_channels)]


def _input_summary(model: Model) -> str:
    if model.normalization.colour == "haematoxylin" and model.config.in_channels == 1:
        return "haematoxylin optical density of RGB tissue (colour deconvolution; see the README)"
    return "image intensities, one plane at a time (any dtype, given as float32)"


def documentation(model: Model, license: str = DEFAULT_LICENSE) -> str:
    """The README of ``model``'s package: what the spec holds and what lies outside it."""
    config = model.config
    norm = model.normalization
    lines = [
        f"# {_package_name(model)}",
        "",
        model.description or f"A U-Net with {config.num_classes} classes.",
        "",
        f"A 2D U-Net (Ronneberger et al. 2015) trained with napari-unet: depth {config.depth}, base width "
        f"{config.base_width}, {config.in_channels} input channel(s), {config.num_classes} classes, "
        f"{config.padding!r} padding{', batch norm' if config.batch_norm else ''}.",
        "",
        "## Input",
        "",
    ]
    if norm.colour == "haematoxylin" and config.in_channels == 1:
        lines += [
            "This model reads RGB images of haematoxylin-stained tissue (H&E and others) through their "
            "haematoxylin stain. The spec has no colour deconvolution, so the package's input is the "
            "one-channel haematoxylin image, which you compute from the RGB image first:",
            "",
            "1. transmitted light `t = clip(rgb / white, 1/255, 1)` per channel, with `white` the largest "
            "value of the image's integer type (255 for 8 bits); for a float image 1, or its largest value "
            "where that is higher;",
            "2. optical density `od = -log10(t)`;",
            "3. haematoxylin `h = max(0, od @ inv(S)[:, 0])`, with `S` the stain matrix of Ruifrok and "
            "Johnston (2001) whose rows, each scaled to length 1, are haematoxylin (0.65, 0.70, 0.29), "
            "eosin (0.07, 0.99, 0.11) and DAB (0.27, 0.57, 0.78).",
            "",
            "napari-unet does this itself when given the RGB image (`napari_unet.core.normalize.haematoxylin`).",
            "",
        ]
    else:
        lines += [f"One image plane ({config.in_channels} channel(s), height, width), any intensity type.", ""]
    if config.padding == "same":
        sizes = (f"The height and width must be multiples of {2**config.depth}; the output has the input's "
                 "size. napari-unet pads images of other sizes itself, and cuts large images into tiles that "
                 f"overlap by {model.network.context} pixels, of which each tile keeps only its centre: a tool "
                 "that predicts in tiles needs that overlap to give the same probabilities at the tiles' edges "
                 "as one pass over the whole image.")
    else:
        smallest = model.network.valid_input_size(1)
        sizes = (f"The network has no padding: the height and width must be sizes it accepts (at least "
                 f"{smallest}, in steps of {2**config.depth}), and the output is "
                 f"{smallest - model.network.output_size(smallest)} pixels smaller than the input, half of "
                 "that removed on each side. napari-unet mirrors an image's border by that much first, as the "
                 "U-Net paper does.")
    lines += [
        f"Preprocessing (in the spec, `scale_range` over y and x): each plane and channel is scaled so that "
        f"its percentiles {norm.low_percentile:g} and {norm.high_percentile:g} map to 0 and 1, without "
        "clipping." + (" Then the intensities are inverted (in the spec, `scale_linear` with gain -1 and "
                       "offset 1): the model reads dark objects on a bright background." if norm.invert else ""),
        "",
        sizes,
        "",
        "## Output",
        "",
        f"The softmax probabilities of the classes {', '.join(_CLASSES[config.num_classes])}, one channel each.",
        "",
        "## From probabilities to objects (outside the spec)",
        "",
        "napari-unet turns the probabilities into instance labels in a step the spec cannot describe "
        "(`napari_unet.core.postprocess.probabilities_to_labels`):",
        "",
    ]
    if model.separation == "peaks":
        separated = ("interior probability (class 1)" if config.num_classes == 3
                     else f"foreground probability above {max(model.threshold, 0.5):g}")
        diameter = f"{model.object_diameter:.1f}" if model.object_diameter else "the separated parts' median"
        lines += [
            f"1. separated foreground: the pixels whose {separated} exceeds the threshold ({model.threshold:g}); "
            "the objects' extent: the pixels whose object probability (1 - background) exceeds it;",
            f"2. peaks: the Euclidean distance of the separated foreground from its edge, smoothed by a Gaussian "
            f"of a twentieth of the object diameter ({diameter} pixels); each of its peaks that rises a tenth of "
            "the diameter above the saddles around it (h-maxima) starts an object;",
            "3. a watershed of the negated distance grows the objects over their extent; objects under 10 pixels "
            "are dropped.",
        ]
    elif config.num_classes == 3:
        growth = growth_distance(model.gap, model.object_diameter)
        lines += [
            f"1. seeds: connected components of the pixels whose interior probability exceeds the threshold "
            f"({model.threshold:g}); components under 10 pixels are dropped;",
            f"2. growth: each pixel whose object probability (1 - background) exceeds the threshold and that "
            f"no seed holds goes to the nearest seed within {growth:.1f} pixels (the growth distance: the largest "
            f"of 2 x gap = {2 * model.gap} pixels, 2 pixels and an eighth of the object diameter).",
        ]
    else:
        lines += [
            f"1. seeds: connected components of the pixels whose foreground probability exceeds "
            f"{max(model.threshold, 0.5):g} (the threshold, or 0.5 where the threshold is lower); components "
            "under 10 pixels are dropped;",
            f"2. growth: the gaps the network leaves between touching objects (gap {model.gap} pixel(s)) and "
            f"the pixels whose foreground probability exceeds the threshold go to the nearest seed within "
            f"{2 * max(model.gap, 1)} pixels.",
        ]
    lines += [
        "",
        f"Threshold: {model.threshold:g}, the model's own (training chooses it on the validation images; "
        "napari-unet's `--threshold` sets another).",
    ]
    scale = []
    if model.object_diameter:
        scale.append(f"The median object diameter in the training data is {model.object_diameter:.1f} pixels: "
                     "images whose objects are of another size should be rescaled so that they match it "
                     "(napari-unet's `--diameter`), which the spec does not describe either.")
    if model.pixel_size:
        size = model.pixel_size
        scale.append(f"The training images' pixel size is {size[0]:g} x {size[1]:g} {model.pixel_unit}".rstrip()
                     + ".")
    else:
        scale.append("The training images' pixel size is not known.")
    lines += ["", "\n\n".join(scale), ""]
    if model.colour_model is not None:
        lines += [f"napari-unet hands colour (RGB) images to the model {model.colour_model.name or 'made for them'}; "
                  "this package holds this model's network only. Export that model as a package of its own.", ""]
    lines += ["## Training data", "", model.training_data or "Not recorded.", ""]
    # The model zoo asks every README for a Validation section.
    lines += ["## Validation", ""]
    figures = ", ".join(f"{key} {value}" for key, value in model.evaluation.items() if key != "data")
    if figures:
        where = model.evaluation.get("data")
        lines += [f"On held-out images{f' ({where})' if where else ''}: {figures}.", ""]
    else:
        lines += ["No figures on held-out images were recorded with this model.", ""]
    lines += [
        "## Licence",
        "",
        f"The weights: {license}. The training data keep their own licences, as stated under Training data. "
        f"The architecture's source, {_ARCHITECTURE}, is part of napari-unet (BSD-3-Clause).",
        "",
        "## Using it with napari-unet",
        "",
        "`napari-unet predict --model PACKAGE.zip --out LABELS IMAGES` and "
        "`napari_unet.load_model(\"PACKAGE.zip\")` read this package back as the napari-unet model it was "
        "written from (its metadata is in the description's `config.napari_unet`), and segment with the "
        "post-processing above.",
        "",
        "## Citation",
        "",
        "Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional Networks for Biomedical Image "
        "Segmentation. MICCAI 2015, LNCS 9351. doi:10.1007/978-3-319-24574-4_28",
        "",
    ]
    return "\n".join(lines)


# -- reading ---------------------------------------------------------------------------


def _description_name(names: list[str]) -> str | None:
    """The description file among a zip's ``names``, or None where it has none."""
    for name in names:
        if name in _DESCRIPTION_NAMES or name.endswith(".bioimageio.yaml"):
            return name
    return None


def _first_line(text) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "unknown reason")[:300]


def _reason(description) -> str:
    """Why the spec found a package invalid, in one line."""
    text = str(description.get_reason()) if hasattr(description, "get_reason") else ""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "it does not follow the spec")
    if "SHA256 mismatch" in line:  # the checksum names the file, and is long: said in words
        where = line.split("SHA256 mismatch for ", 1)[1].split(". Expected", 1)[0].split("/")[-1]
        return f"{where} is not the file it was written with (damaged or altered)"
    return line[:300]
