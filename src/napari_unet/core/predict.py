"""Overlap-tile prediction of images of any size and of stacks of any depth.

The image is padded at its borders as the network needs (see :func:`image_border`), cut
into tiles that overlap by the network's context on each side, and the tiles are
predicted in batches by a fast inference copy of the network; each tile keeps only the
pixels where it sees all the context it needs. Tiles start on the network's pooling
grid, so the stitched result equals a whole-image prediction up to float rounding and
shows no seams. Running out of device memory halves the batch of tiles.

Test-time augmentation averages the probabilities of the eight orientations of a plane
(quarter turns, each also mirrored); the U-Net paper's ISBI 2012 result averaged seven
rotated versions of the input.

Long work is a generator that yields :class:`PredictProgress` and returns the result;
:func:`predict` is the plain synchronous wrapper.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import torch

from .bundle import Model
from .device import (
    autocast,
    inference_dtype,
    is_out_of_memory,
    mixed_precision_dtype,
    resolve_device,
    smaller_batch_after,
)
from .errors import ImageWarning, InputError, InputWarning
from .familiarity import unfamiliar_image_message
from .memory import available_memory
from .model import UNet
from .normalize import as_planes, is_colour, normalization_for
from .planes import ArrayPlanes, LazyPlanes
from .postprocess import foreground_probability, probabilities_to_labels
from .prediction_settings import PredictionSettings
from .progress import run_to_end
from .registry import as_model
from .scale import (
    circle_diameters,
    object_diameter,
    resize_plane,
    scale_factor,
    scaled_shape,
    usable_diameter,
    widest_areas,
)
from .threads import ThreadTuner
from .views import SIDE_VIEW_BYTES_PER_VOXEL, combined_views, side_view_probabilities
from .volume import (
    BYTES_PER_VOXEL,
    HELD_BYTES_PER_VOXEL,
    SMALLEST_BLOCK_HALOS,
    SMALLEST_CHUNK_HALOS,
    VolumeLabeller,
    labelling_factor,
    trim_axial_blur,
)

__all__ = ["PredictProgress", "Prediction", "PredictionSettings", "settled_for", "checked_z_scale", "default_tile_size", "default_tiles_per_pass", "image_border", "predict_probabilities", "predict_planes_iter", "predict_iter", "predict", "estimate_diameter"]

logger = logging.getLogger(__name__)

#: What ``diameter="auto"`` says when the first plane has no objects to measure.
NO_DIAMETER_FOUND = ("no objects of a size the model can be rescaled to were found to estimate their diameter; "
                     "not rescaled")

#: Tiles per forward pass on a GPU unless told otherwise (fewer when its memory is short).
GPU_TILES_PER_PASS = 4
#: ``diameter="auto"`` on a volume labels a central block of at most this many planes, and
#: pixels a side, at each scale it tries: dozens of objects, seconds each on a CPU.
SIZING_BLOCK = (64, 384)


#: Largest tile edge on a GPU unless told otherwise: several such tiles fit in its memory.
GPU_TILE_SIZE = 1024

#: Largest tile edge on a CPU unless told otherwise, memory permitting: a plane up to this
#: size goes through the network in one pass, without the overlap that tiles recompute
#: (a 2048x2048 plane cut into 912-pixel tiles does 1.8 times the work of one pass, and
#: a CPU convolves large tiles about as fast per FLOP as small ones).
CPU_TILE_SIZE = 2048


def _bytes_per_tile_pixel(network: UNet, bytes_per_value: int, device_type: str = "cuda") -> int:
    """Memory an inference pass holds per tile pixel.

    Inference holds every level's skip connection (together about twice the first
    level's feature maps) and, on the way up, the first level's concatenated and
    convolved maps: about six first-level maps. On a CPU a 2048 x 2048 tile of
    ``nuclei`` held five in float32 (317 bytes a pixel, measured above the plane's own
    arrays): six leave room there; eight on a GPU, whose convolutions take workspace
    of their own.
    """
    maps = 6 if device_type == "cpu" else 8
    return maps * network.config.base_width * bytes_per_value


def default_tile_size(network: UNet, device: torch.device) -> int:
    """Largest tile edge unless told otherwise.

    :data:`GPU_TILE_SIZE` on a GPU; on a CPU the largest edge up to
    :data:`CPU_TILE_SIZE` whose feature maps take at most a quarter of the memory
    available, and never less than the GPU's.
    """
    if device.type != "cpu":
        return GPU_TILE_SIZE
    edge = int(math.sqrt(available_memory() / 4 / _bytes_per_tile_pixel(network, 4, "cpu")))
    edge = edge // network.size_multiple * network.size_multiple
    return max(GPU_TILE_SIZE, min(CPU_TILE_SIZE, edge))


def _plane_prediction_bytes(network: UNet, settings: PredictionSettings, shape: tuple[int, int]) -> int:
    """Main memory that predicting a plane of ``shape`` (the network's grid) holds while it runs.

    Its tiles' feature maps (on a CPU), and the plane's own arrays: normalized and
    padded, its class probabilities in float32 and as kept in float16, its labels, and
    the post-processing of the plane before (a 2048 x 2048 plane of a three-class model:
    54 bytes a pixel, measured).
    """
    device = resolve_device(settings.device)
    pixels = shape[0] * shape[1]
    maps = 0
    if device.type == "cpu":
        tile = min(settings.tile_size or default_tile_size(network, device), max(shape) + 2 * image_border(network))
        maps = tile**2 * (settings.batch_size or 1) * _bytes_per_tile_pixel(network, 4, "cpu")
    classes = network.config.num_classes
    return maps + pixels * (4 * (2 + classes) + 2 * classes + 28)


def default_tiles_per_pass(device: torch.device) -> int:
    """Tiles per forward pass unless told otherwise: 1 on a CPU, :data:`GPU_TILES_PER_PASS` on a GPU.

    A GPU needs several tiles at once to be busy; a CPU is busy with one, and more only
    multiply the feature maps that must pass through its caches (measured on 2 cores: 9
    tiles of 912x912 6 % faster one at a time than four at a time).
    """
    return 1 if device.type == "cpu" else GPU_TILES_PER_PASS


@dataclass(frozen=True)
class PredictProgress:
    """Where a prediction is: ``done`` of ``total`` tile batches of plane ``plane`` (0-based) of ``planes``."""

    plane: int
    planes: int
    done: int
    total: int
    #: The finished plane's labels and foreground probability, on the last item of a
    #: plane only, so that a viewer can show a stack filling in plane by plane.
    labels: np.ndarray | None = field(default=None, compare=False, repr=False)
    probability: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: With ``volume``: ``(first, labels)``, the 3D labels of the stack's planes from
    #: ``first`` on (a chunk or a volume), on an item of their own (``plane`` then says
    #: the last plane predicted, and ``labels`` is None): chunks are labelled in a second
    #: thread while the next planes are predicted, and given in order.
    volume_labels: tuple[int, np.ndarray] | None = field(default=None, compare=False, repr=False)


@dataclass
class Prediction:
    """Result of a prediction, shaped like the input without its channel axis.

    Attributes:
        labels: int32 instance labels (0 = background); None when not collected.
        probability: float32 foreground probability in [0, 1]; None when not collected.
        scale: Factor by which the planes were resized for the network (1.0: not resized).
        diameter: Object diameter (pixels) assumed for the image: the one given or
            estimated, else the model's.
    """

    labels: np.ndarray | None
    probability: np.ndarray | None
    scale: float = 1.0
    diameter: float | None = None


def image_border(network: UNet) -> int:
    """Mirror margin around the image: what a whole-image pass would pad.

    A "valid" network needs its full context from the mirror. A "same" network needs
    none: it was trained on patches whose borders it saw zero-padded, and predicting the
    image's border the same way is what it does best. On the 80 held-out DSB2018 images
    the ``nuclei`` model scored AP50 0.797 with no mirror, 0.791 with 32 pixels and 0.792
    with its whole context of 112, which also doubles the work on a 512x512 image.
    """
    return network.context if network.config.padding == "valid" else 0


@dataclass(frozen=True)
class _AxisTiling:
    """Where the tiles lie along one axis of the mirror-padded image.

    Every tile is ``tile`` long and starts at one of ``starts`` (padded coordinates); it
    gives the output pixels ``kept[i]`` = (first image pixel, count) from its network
    output at ``keep_from[i]``.
    """

    tile: int
    pad_before: int
    pad_after: int
    starts: tuple[int, ...]
    kept: tuple[tuple[int, int], ...]
    keep_from: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.starts)


def smallest_tile(network: UNet) -> int:
    """The smallest tile edge prediction uses; smaller tile sizes are raised to it.

    A tile keeps at least half of its length (it gives up its context, ``network.context``
    on each side), or it would spend most of its work on context.
    """
    return max(4 * network.context, 2 * network.context + network.size_multiple)


def _axis_tiling(network: UNet, length: int, tile_size: int) -> _AxisTiling:
    multiple = network.size_multiple
    context = network.context
    border = image_border(network)
    padded = network.valid_input_size(length + 2 * border)
    # A "same" network's output covers the whole tile; a "valid" one's starts after the context.
    same = network.config.padding == "same"
    largest_tile = max(tile_size, smallest_tile(network))
    if padded <= largest_tile:  # one tile: the whole-image pass itself
        return _AxisTiling(padded, border, padded - border - length, (0,), ((0, length),),
                           (border if same else 0,))
    largest_step = max((largest_tile - 2 * context) // multiple * multiple, multiple)
    count = math.ceil(length / largest_step)
    # Spread the length evenly over the tiles; steps on the pooling grid keep every tile
    # aligned with the whole-image pass.
    step = math.ceil(length / count / multiple) * multiple
    tile = network.valid_input_size(step + 2 * context)
    # A "valid" network pads nothing itself: its tiles simply run on over the mirror.
    padded = max(padded, tile if same else (count - 1) * step + tile)
    starts, kept, keep_from = [], [], []
    for index in range(count):
        first = index * step
        # A "same" tile holds its kept pixels with their context on both sides, or reaches
        # the padded image's edge, where the whole-image pass sees the same zero padding.
        start = min(max(first - context + border, 0), padded - tile) if same else first
        starts.append(start)
        kept.append((first, min(step, length - first)))
        keep_from.append(first + border - start if same else first + border - start - context)
    return _AxisTiling(tile, border, padded - border - length, tuple(starts), tuple(kept), tuple(keep_from))


def _mirror_pad(image: np.ndarray, pad: tuple[tuple[int, int], ...]) -> np.ndarray:
    # numpy reflects repeatedly when the padding exceeds the image; a single pixel has
    # nothing to reflect, so it is repeated instead.
    mode = "reflect" if min(image.shape[-2:]) > 1 else "edge"
    return np.pad(image, pad, mode=mode)


#: Inference copies of the networks predicted with, per device and compiled or not; a
#: copy is rebuilt when its network's weights change (training updates them in place,
#: bumping their versions).
_inference_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_network(network: UNet, device: torch.device, compiled_for: torch.Tensor | None = None,
                       amp: bool = False) -> torch.nn.Module:
    """The network's inference copy on ``device``, kept while its weights stay the same.

    Args:
        network: The network.
        device: Where the copy runs.
        compiled_for: An input like the ones to come: the copy is compiled for it (see
            :func:`_compiled`). None: not compiled.
        amp: Mixed precision: float16 autocast on CUDA (here only for the compilation),
            a bfloat16 copy on a CPU with AMX (:func:`~napari_unet.core.device.inference_dtype`).
    """
    copies = _inference_copies.setdefault(network, {})
    dtype = inference_dtype(device, amp)
    kind = (str(device), dtype, compiled_for is not None)
    versions = tuple(tensor._version for tensor in network.state_dict().values())
    if kind not in copies or copies[kind][0] != versions:
        # The compiler fuses the plain blocks itself.
        copy = network.inference_copy(device, fuse=compiled_for is None).to(dtype)
        if compiled_for is not None:
            copy = _compiled(copy, compiled_for, device, amp)
        copies[kind] = (versions, copy)
    return copies[kind][1]


def _autocast_around(copy_dtype: torch.dtype, device: torch.device, amp: bool):
    """Autocast around an inference copy: none for one converted to bfloat16, float16 on CUDA around a float32 one.

    Compiling and running must agree on it: a compiled network is compiled again when
    the autocast around it changes.
    """
    return autocast(device, amp and copy_dtype == torch.float32)


def _compiled(network: UNet, example: torch.Tensor, device: torch.device, amp: bool) -> torch.nn.Module:
    """``network`` compiled by ``torch.compile`` and run once on ``example``; itself if that fails.

    Compiling with frozen weights lets the compiler fold the convolutions' weights into
    the device's preferred layout and fuse each ReLU and concatenation into the code
    around it: on a 2-core CPU a 1024x1024 plane is predicted about 8 % faster (larger
    planes gain less: their memory traffic dominates). It costs 10 to 25 seconds per tile
    shape (and a C++ compiler on the CPU), which only a long prediction earns back.
    Where compiling is not possible, prediction goes on uncompiled, with a warning.
    """
    logger.info("compiling the network for tiles of %dx%d pixels (once per tile size)", *example.shape[-2:])
    compiled = torch.compile(network, options={"freezing": True})
    try:
        with torch.inference_mode(), _autocast_around(example.dtype, device, amp):
            compiled(example)
    except Exception as error:  # noqa: BLE001 - whatever stops the compiler, the plain network can do the work
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"could not compile the network ({reason[:200]}); predicting without compiling",
                      InputWarning, stacklevel=4)
        return network
    return compiled


def _tiles_that_fit(network: UNet, tile_shape: tuple[int, int], device: torch.device, amp: bool) -> int | None:
    """How many tiles free CUDA memory holds in one forward pass (None: not known here)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    per_tile = _bytes_per_tile_pixel(network, mixed_precision_dtype(device, amp).itemsize) * tile_shape[0] * tile_shape[1]
    return max(1, int(0.8 * free) // per_tile)


def _stitching_device(device: torch.device, values: int) -> torch.device:
    """Where a plane's padded input and its probabilities (``values`` float32 numbers) stay while its tiles are predicted.

    On a GPU, the GPU itself when they take at most a quarter of its free memory: tiles
    are then cut and stitched there and the probabilities come back in one copy per
    plane, instead of every tile's, margins included, in copies that keep the GPU
    waiting. Elsewhere, and for planes too large for that, main memory.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if 4 * values <= free // 4:
            return device
    return torch.device("cpu")


def predict_probabilities(
    network: UNet,
    plane: np.ndarray,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    compile_network: bool = False,
) -> Iterator[tuple[int, int] | np.ndarray]:
    """Class probabilities of one normalized plane, by overlapping tiles.

    A generator: yields ``(done, total)`` tile batches, then returns the
    ``(classes, H, W)`` float32 probabilities (use :func:`run_to_end` to get them).

    Args:
        network: The U-Net (left as it is: an inference copy of it runs on ``device``).
        plane: ``(channels, H, W)`` float32, already normalized.
        tile_size: Largest tile edge in pixels, context included (None: 1024 on a GPU,
            up to 2048 on a CPU as memory allows; see :func:`default_tile_size`).
        batch_size: Most tiles per forward pass (None: 1 on a CPU, 4 on a GPU): fewer on
            a GPU whose free memory does not hold them, and halved (with a warning)
            whenever the device runs out of memory.
        device: Torch device or "auto".
        amp: Mixed precision where the device is faster with it: float16 on CUDA, bfloat16 on a
            CPU with AMX (:func:`~napari_unet.core.device.mixed_precision_dtype`); False: float32.
        compile_network: Compile the network with ``torch.compile`` first (see
            :func:`_compiled`); pays off over many planes of the same size.

    Raises:
        InputError: If a single tile does not fit in the device's memory.
    """
    settings = PredictionSettings(tile_size=tile_size, batch_size=batch_size, device=device, amp=amp,
                                  compile_network=compile_network)
    probabilities = yield from _stitched_probabilities(network, plane, settings)
    return probabilities.cpu().numpy()


def _stitched_probabilities(network: UNet, plane: np.ndarray, settings: PredictionSettings
                            ) -> Iterator[tuple[int, int] | torch.Tensor]:
    """:func:`predict_probabilities` with ``settings``' tiling, device and precision, returned as
    the tensor they were stitched in.

    That tensor lies on the GPU where the plane has room there
    (:func:`_stitching_device`), so that its labels can be made there too.
    """
    device, amp = resolve_device(settings.device), settings.amp
    tile_size, batch_size = settings.tile_size, settings.batch_size
    if tile_size is None:
        tile_size = default_tile_size(network, device)
    _, height, width = plane.shape
    classes = network.config.num_classes
    rows = _axis_tiling(network, height, tile_size)
    cols = _axis_tiling(network, width, tile_size)
    padded = _mirror_pad(plane, ((0, 0), (rows.pad_before, rows.pad_after), (cols.pad_before, cols.pad_after)))
    padded = np.ascontiguousarray(padded, dtype=np.float32)
    stitching = _stitching_device(device, padded.size + classes * height * width)
    source = torch.from_numpy(padded).to(stitching)
    result = torch.zeros((classes, height, width), dtype=torch.float32, device=stitching)
    windows = [(row, col) for row in range(rows.count) for col in range(cols.count)]
    if batch_size is None:
        batch_size = default_tiles_per_pass(device)
    fit = _tiles_that_fit(network, (rows.tile, cols.tile), device, amp)
    batch_size = min(batch_size, fit) if fit else batch_size
    dtype = inference_dtype(device, amp)
    example = None
    if settings.compile_network:
        example = torch.zeros((min(batch_size, len(windows)), plane.shape[0], rows.tile, cols.tile), device=device,
                              dtype=dtype)
        example = example.contiguous(memory_format=torch.channels_last)
    runner = _inference_network(network, device, example, amp)
    done = position = 0
    while position < len(windows):
        batch = windows[position : position + batch_size]
        try:
            with torch.inference_mode():
                tiles = torch.stack([source[:, rows.starts[r] : rows.starts[r] + rows.tile,
                                            cols.starts[c] : cols.starts[c] + cols.tile] for r, c in batch])
                with _autocast_around(dtype, device, amp):
                    logits = runner(tiles.to(device, dtype).contiguous(memory_format=torch.channels_last))
                for (r, c), tile_logits in zip(batch, logits):
                    (y, keep_h), (x, keep_w) = rows.kept[r], cols.kept[c]
                    top, left = rows.keep_from[r], cols.keep_from[c]
                    # Only the kept pixels are turned into probabilities and leave the device.
                    kept = tile_logits[:, top : top + keep_h, left : left + keep_w]
                    result[:, y : y + keep_h, x : x + keep_w] = torch.softmax(kept.float(), dim=0).to(stitching)
        except RuntimeError as error:
            batch_size = smaller_batch_after(error, len(batch), device, "tiles", (
                f"the {device.type.upper()} ran out of memory for a single tile of "
                f"{rows.tile}x{cols.tile} pixels; choose a smaller tile size"))
            continue
        position += len(batch)
        done += 1
        yield done, done + math.ceil((len(windows) - position) / batch_size)
    return result


#: Orientations that test-time augmentation averages over: the quarter turns of a
#: plane, each also mirrored.
ORIENTATIONS = 8


def _oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` turned by ``orientation % 4`` quarter turns, mirrored from orientation 4 on (last two axes)."""
    turned = np.rot90(array, orientation % 4, axes=(-2, -1))
    return turned[..., ::-1] if orientation >= 4 else turned


def _restored(array: np.ndarray, orientation: int) -> np.ndarray:
    """The inverse of :func:`_oriented`: ``array`` back in the plane's own orientation."""
    unmirrored = array[..., ::-1] if orientation >= 4 else array
    return np.rot90(unmirrored, -(orientation % 4), axes=(-2, -1))


def _averaged_over_orientations(network: UNet, plane: np.ndarray, orientations: int, settings: PredictionSettings
                                ) -> Iterator[tuple[int, int] | np.ndarray]:
    """:func:`predict_probabilities` averaged over the first ``orientations`` orientations of ``plane``.

    Yields ``(done, total)`` tile batches over all orientations, then returns the mean
    ``(classes, H, W)`` probabilities.
    """
    summed = 0.0
    finished = 0  # tile batches of the orientations done
    for orientation in range(orientations):
        tiles = _stitched_probabilities(network, np.ascontiguousarray(_oriented(plane, orientation)), settings)
        while True:
            try:
                done, total = next(tiles)
            except StopIteration as result:
                probabilities = _restored(result.value.cpu().numpy(), orientation)
                break
            # Every orientation has as many tiles: the turned plane's axes swap their tilings.
            yield finished + done, finished + total * (orientations - orientation)
        finished += total
        summed = summed + probabilities
    return summed / np.float32(orientations)


def settled_for(model: Model, settings: PredictionSettings) -> PredictionSettings:
    """``settings`` as ``model`` takes them: with its threshold where none is given, and a
    tile size under the network's smallest tile raised to it, with a warning.

    A run settles its settings once, before any work, so that the warning is given once.
    """
    changes = {}
    smallest = smallest_tile(model.network)
    if settings.tile_size is not None and settings.tile_size < smallest:
        warnings.warn(f"tile size {settings.tile_size} is raised to {smallest}, the smallest this model uses: a tile "
                      f"gives up {model.network.context} pixels of context on each side", InputWarning, stacklevel=3)
        changes["tile_size"] = smallest
    if settings.threshold is None:
        changes["threshold"] = model.threshold
    return settings.replace(**changes) if changes else settings


class _InThread:
    """One call running in a thread of its own, which ends with the call.

    Not a pool: a pool's idle thread lives as long as the generator that owns it, and a
    generator that a caller drops without closing it (a napari worker that was quit)
    lives until the garbage collector finds it.
    """

    def __init__(self, function: Callable, *args):
        self._result: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(function, args), name="napari-unet-labels",
                                        daemon=True)
        self._thread.start()

    def _run(self, function: Callable, args: tuple) -> None:
        try:
            self._result.set_result(function(*args))
        except BaseException as error:  # noqa: BLE001 - handed to whoever asks for the result
            self._result.set_exception(error)

    def done(self) -> bool:
        return self._result.done()

    def result(self):
        """The call's return value (or its exception, raised here), once it has ended."""
        self.wait()
        return self._result.result()

    def wait(self) -> None:
        self._thread.join()


#: Most bytes per pixel that making labels on a GPU holds at once (probabilities, their
#: resized copy, masks and the int64 planes of labelling components), with room to spare.
_POSTPROCESSING_BYTES_PER_PIXEL = 128


def _room_to_postprocess(device: torch.device, shape: tuple[int, int]) -> bool:
    """Whether labels of a plane of ``shape`` can be made on ``device``: a GPU with room for them."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return _POSTPROCESSING_BYTES_PER_PIXEL * shape[0] * shape[1] <= free // 4


#: The GPUs on which making labels failed other than by running out of memory: this
#: process makes its labels on the CPU from then on, instead of failing again on each plane.
_labels_failed_on: set[str] = set()


def _labels_on_the_device(probabilities: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> bool:
    """Whether :func:`_labelled` makes the labels of a plane of ``shape`` on the device of ``probabilities``."""
    return (isinstance(probabilities, torch.Tensor) and str(probabilities.device) not in _labels_failed_on
            and _room_to_postprocess(probabilities.device, shape))


def _labelled(model: Model, probabilities: np.ndarray | torch.Tensor, shape: tuple[int, int], threshold: float,
              min_size: int, pixel_scale: float, on_device: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels and foreground probability of a plane, from its network output, on the plane's own grid.

    Made where the probabilities lie when ``on_device`` (what :func:`_labels_on_the_device`
    said, once, for the caller that waits on it too): a GPU with room for them. The same
    labels (up to the resizing of a rescaled plane, which rounds as the GPU does), from
    a few dozen passes of element-wise kernels there, where the CPU takes a tenth of a
    second for a 2048x2048 plane of nuclei, which a plane predicted on a GPU would wait
    for. Should the GPU run out of memory all the same, the CPU makes them; should
    making them there fail otherwise, too, with a warning, and for the rest of the
    process (the plane is not lost to a fault of this faster way).
    """
    if isinstance(probabilities, torch.Tensor):
        device = probabilities.device
        if on_device:
            try:
                made = _labelled_here(model, probabilities, shape, threshold, min_size, pixel_scale)
                return tuple(result.cpu().numpy() for result in made)
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    _labels_failed_on.add(str(device))
                    warnings.warn(f"labels are made on the CPU: making them on the {device.type.upper()} failed "
                                  f"({error})", RuntimeWarning, stacklevel=2)
            # Out of the handler, whose traceback holds the failed attempt's tensors.
            torch.cuda.empty_cache()
        probabilities = probabilities.cpu().numpy()
    return _labelled_here(model, probabilities, shape, threshold, min_size, pixel_scale)


def _labelled_here(model: Model, probabilities: np.ndarray | torch.Tensor, shape: tuple[int, int], threshold: float,
                   min_size: int, pixel_scale: float) -> tuple:
    """:func:`_labelled` on the device of ``probabilities`` (an array or tensor), results alike."""
    probabilities = resize_plane(probabilities, shape)
    labels = probabilities_to_labels(probabilities, threshold, min_size, model.gap, pixel_scale, model.object_diameter,
                                     model.separation)
    return labels, foreground_probability(probabilities)


def _labelled_and_judged(model: Model, probabilities: np.ndarray | torch.Tensor, shape: tuple[int, int],
                         threshold: float, min_size: int, pixel_scale: float, on_device: bool,
                         classes_shape: tuple[int, int] | None = None) -> tuple:
    """:func:`_labelled`, what to tell the user when the output says the image is foreign to the model (or None),
    and the class probabilities on a grid of ``classes_shape`` in float16 (None when not given)."""
    classes = None
    if classes_shape is not None:
        resized = resize_plane(probabilities, classes_shape)
        if tuple(classes_shape) == tuple(shape):
            probabilities = resized  # resized once: the plane's labels are made on the same grid
        # float16 halves what a volume's planes hold until the volume is labelled.
        classes = (resized.cpu().numpy() if isinstance(resized, torch.Tensor) else resized).astype(np.float16)
    labels, probability = _labelled(model, probabilities, shape, threshold, min_size, pixel_scale, on_device)
    return labels, probability, unfamiliar_image_message(model, labels, probability, pixel_scale), classes


def _room_for_another_plane(model: Model, shape: tuple[int, int]) -> bool:
    """Whether making a plane's labels while the next is predicted leaves memory to spare.

    Making labels holds the plane's probabilities, its labels and foreground probability,
    and about five plane-sized temporaries of post-processing; overlapping them with the
    next plane holds a second set. Both sets must fit in a quarter of the memory
    available, as the tile size's feature maps must (:func:`default_tile_size`).
    """
    per_plane = (model.config.num_classes + 7) * 4 * shape[0] * shape[1]
    return 2 * per_plane <= available_memory() / 4


def predict_planes_iter(
    model: Model,
    planes: Iterable[tuple[np.ndarray, float]],
    settings: PredictionSettings | None = None,
    *,
    keep_classes: bool = False,
    **options,
) -> Iterator[tuple[int, int, int, tuple[np.ndarray, ...] | None]]:
    """Predict a stream of planes, post-processing each while the next is prepared.

    Each plane's labels are made in a second thread while the next plane is read and
    normalized and, when the labels are made on the CPU, while it goes through the
    network, where memory allows two planes' work at once
    (:func:`_room_for_another_plane`): on a GPU, labels made on the CPU took as long as
    the network's tiles of a 2048x2048 plane (an H200). Labels made on the GPU
    (:func:`_labelled`) are waited for before the next plane's tiles, which are sized
    to the GPU's free memory. Progress stays in order: the tile
    batches of a plane are reported once the plane before it is finished. Failures too:
    when a plane cannot be read or predicted, the plane before it is given out first, so
    that an error always belongs to the first plane not given out. On the CPU, the
    network runs under as many threads as pass planes fastest beside whatever else the
    machine runs (:class:`~napari_unet.core.threads.ThreadTuner`, timing each plane's
    seconds per pixel).

    Args:
        model: The model.
        planes: ``(channels, H, W)`` planes, as :func:`~napari_unet.core.normalize.as_planes`
            makes them (their sizes may differ), each with its scale for the network
            (see :func:`~napari_unet.core.scale.scale_factor`); results are brought back.
        settings: How to predict (None: the defaults).
        keep_classes: Also give each plane's class probabilities in float16, for labels
            made across planes, on the grid they are labelled on
            (:func:`~napari_unet.core.volume.labelling_factor`).
        **options: Settings to change, by their names in :class:`PredictionSettings`.

    Yields:
        ``(plane, done, total, None)`` as the tile batches of a plane are done, and
        ``(plane, total, total, (labels, probability))`` once the plane is finished
        (``(labels, probability, classes)`` when ``keep_classes``).
    """
    settings = settled_for(model, PredictionSettings.of(settings, **options))
    normalize = normalization_for(model.normalization, settings.intensity_range)
    pending = None  # (plane, tile batches, labels in the making, on the GPU?) of the plane being post-processed
    held: list = []  # progress of the plane in the network, reported once the plane before it is done
    threads = ThreadTuner() if resolve_device(settings.device).type == "cpu" else None
    unfamiliar_said = False  # once for the stream: the hazy planes of a z-stack would say it again and again

    def reported():
        """The plane being post-processed, once it is done, then the progress held back."""
        nonlocal pending, unfamiliar_said
        if pending is not None:
            plane_index, batches, labelled, _ = pending
            pending = None
            labels, probability, unfamiliar, classes = labelled.result()
            if unfamiliar and not unfamiliar_said:
                unfamiliar_said = True
                warnings.warn(unfamiliar, ImageWarning, stacklevel=2)
            yield plane_index, batches, batches, (labels, probability) + ((classes,) if keep_classes else ())
        yield from held
        held.clear()

    try:
        for index, (plane, factor) in enumerate(planes):
            shape = plane.shape[-2:]
            if pending is not None and not _room_for_another_plane(model, shape):
                yield from reported()  # one plane's work at a time where two would not fit
            normalized = resize_plane(normalize(plane), scaled_shape(shape, factor))
            if pending is not None and pending[3]:
                # Its labels are being made on the GPU, whose memory the next tiles would
                # be sized to without them.
                yield from reported()
            tiles = (_averaged_over_orientations(model.network, normalized, ORIENTATIONS, settings)
                     if settings.test_time_augmentation else _stitched_probabilities(model.network, normalized, settings))
            in_network = 0.0  # seconds, not counting the consumer's between the tile batches
            while True:
                started = time.monotonic()
                try:
                    done, total = next(tiles)
                except StopIteration as finished:
                    probabilities = finished.value
                    break
                finally:
                    in_network += time.monotonic() - started
                if done < total:
                    held.append((index, done, total, None))
                if pending is None or pending[2].done():
                    yield from reported()
            if threads is not None:
                threads.step_took(in_network / normalized[0].size)
            yield from reported()
            on_gpu = _labels_on_the_device(probabilities, shape)
            classes_shape = scaled_shape(shape, labelling_factor(factor)) if keep_classes else None
            pending = (index, total, _InThread(_labelled_and_judged, model, probabilities, shape, settings.threshold,
                                               settings.min_size, 1 / factor, on_gpu, classes_shape), on_gpu)
            probabilities = None  # the thread's now: freed with it
        yield from reported()
    except Exception:
        if pending is not None:
            plane_index, batches, labelled, _ = pending
            pending = None
            labels, probability, _, classes = labelled.result()
            yield plane_index, batches, batches, (labels, probability) + ((classes,) if keep_classes else ())
        raise
    finally:
        if threads is not None:
            threads.restore()
        if pending is not None:  # stopped or failed: nobody wants these labels; let them finish
            pending[2].wait()


def predict_iter(
    model: Model,
    image: np.ndarray,
    settings: PredictionSettings | None = None,
    *,
    channel_axis: int | None = None,
    diameter: float | str | None = None,
    pixel_size: tuple[float, float] | None = None,
    volume: bool = False,
    z_scale: float | None = None,
    collect: bool = True,
    **options,
) -> Iterator[PredictProgress]:
    """Predict an image or a stack plane by plane; yields progress, returns a :class:`Prediction`.

    The last two axes are height and width; any leading axes (Z, T, ...) are predicted
    plane by plane. Stop early by closing the generator (or simply no longer iterating).
    Given the objects' diameter or the pixel size, planes are resized so that objects
    match the model's training data, and the results are resized back to the input grid.
    With ``volume``, the planes of a z-stack are labelled together: each object carries
    one label through the planes it spans (see :mod:`~napari_unet.core.volume`).

    Args:
        model: The model, or an embedded model's name or a model file's path.
        image: 2D image, RGB image or stack, any numeric dtype; or a stack read a plane
            at a time (:class:`~napari_unet.core.planes.LazyPlanes`: a TIFF file's pages, or
            a lazy array's planes, as a Dask or Zarr stack of one-channel planes is read).
        settings: How to predict and post-process (None: the defaults); see
            :class:`~napari_unet.core.prediction_settings.PredictionSettings`.
        channel_axis: Channel axis of a multi-channel image, if not guessed right.
        diameter: Typical object diameter in the image, in pixels, or "auto" to estimate
            it from a first prediction of the first plane (see :func:`estimate_diameter`).
            None: the pixel size decides, or nothing is resized; a ``volume``'s diameter
            is then estimated (in 3D) unless its pixel size can be compared with the model's.
        pixel_size: Pixel size ``(y, x)`` of the image in the model's unit, used when
            no diameter is given.
        volume: Label a z-stack in 3D: the last axis before height and width is Z, and
            any axis before it (T) gives volumes labelled one by one. The planes' labels
            given with the progress are each plane's own; the returned labels are 3D.
        z_scale: The z step of a volume in pixels (its distance between planes over
            the pixel width); None: 1, with a warning.
        collect: Gather the results into the returned :class:`Prediction`. False: give
            them only with the progress (each plane's labels and probability, and with
            ``volume`` the 3D labels of each chunk), for a caller that writes them as
            they come and holds no stack of results; the Prediction then has none.
        **options: Settings to change, by their names in :class:`PredictionSettings`
            (``tile_size=512``, ``threshold=0.6``, ``device="cpu"``, ...).

    Raises:
        InputError: If a setting is wrong; with ``volume``, if the image has one plane,
            is in colour, or ``z_scale`` is not a positive number.
        TypeError: For an option that is no setting.
    """
    settings = PredictionSettings.of(settings, **options)
    model = as_model(model).for_image(image, channel_axis)
    settings = settled_for(model, settings)
    if volume:
        z_scale = checked_z_scale(z_scale)
        if is_colour(image, model.config.in_channels, channel_axis):
            raise InputError("3D labels are made from one-channel z-stacks; this stack is in colour (RGB): "
                             "give one channel, or predict its planes one by one")
    if ArrayPlanes.reads(image, model.config.in_channels, channel_axis):
        image = ArrayPlanes(image)  # a lazy array (a large file napari opened lazily): read a plane at a time
    if isinstance(image, LazyPlanes):
        planes, stack_shape = image, image.stack_shape
    else:
        planes, stack_shape = as_planes(image, model.config.in_channels, channel_axis, model.normalization.colour)
    height, width = planes.shape[-2:]
    if volume and (not stack_shape or stack_shape[-1] < 2):
        raise InputError("3D labels need a z-stack of two planes or more; this image has one plane: predict it "
                         "without 3D")
    if volume and settings.intensity_range is None:
        # One range for the stack (mean 3D AP50 0.67 on the shared nuclei volumes, 0.52 by
        # each plane's percentiles): its end planes of haze stay dark.
        settings = settings.replace(intensity_range=model.normalization.range_of(planes))
    if volume and diameter is None and not (pixel_size is not None and model.pixel_size) and model.object_diameter:
        # Objects a third larger than the model's split in z (3D AP50 0.21 against 0.67 on the
        # shared plant nuclei), and a volume has objects enough to measure reliably.
        diameter = "auto"
    if isinstance(diameter, str):
        if diameter != "auto":
            raise InputError(f"the diameter must be a number of pixels or 'auto', not {diameter!r}")
        diameter = (_estimate_volume_diameter(model, planes[:stack_shape[-1]], settings, z_scale) if volume
                     else _estimate_plane_diameter(model, planes[0], settings))
        if diameter is None:
            warnings.warn(NO_DIAMETER_FOUND, ImageWarning, stacklevel=2)
    factor = scale_factor(model, diameter, pixel_size)
    labeller, side_views = None, False
    if volume:
        settings, labeller, side_views = _volume_plan(model, settings, stack_shape, height, width, factor, z_scale,
                                                      collect)
    normalize = normalization_for(model.normalization, settings.intensity_range)
    # One plane's results are kept as they are made: copying those of a 2048x2048 plane
    # into a stack takes about 10 ms, a twentieth of its whole prediction on a GPU.
    single_plane = len(planes) == 1
    labels = probability = None
    if collect and not single_plane:
        labels = np.zeros((len(planes), height, width), np.int32)
        probability = np.zeros((len(planes), height, width), np.float32)
    planes_done = predict_planes_iter(model, ((plane, factor) for plane in planes), settings, keep_classes=volume)
    behind = None
    if side_views:  # the side views end the objects in z: their blur is not trimmed again
        behind = _SeenFromTheSide(_LabelledBehind(labeller, lambda done: None), model, settings, planes,
                                  stack_shape[-1], normalize, factor, z_scale)
    elif labeller is not None:
        behind = _LabelledBehind(labeller, lambda done: _trim_axial_blur_of(done, planes, stack_shape[-1], normalize))

    def chunks(completed: list[tuple[int, np.ndarray]], index: int) -> Iterator[PredictProgress]:
        for first, volume_part in completed:
            if collect:  # a chunk or a volume is labelled: its 3D labels replace its planes'
                labels[first:first + len(volume_part)] = volume_part
            yield PredictProgress(index, len(planes), 1, 1, volume_labels=(first, volume_part))

    try:
        with closing(planes_done):
            index = 0
            for index, done, total, finished in planes_done:
                if finished is None:
                    yield PredictProgress(index, len(planes), done, total)
                    continue
                plane_labels = np.asarray(finished[0], np.int32)
                plane_probability = np.asarray(finished[1], np.float32)
                if side_views:
                    for side_done, side_total in behind.add(index, finished[2]):
                        yield PredictProgress(index, len(planes), side_done, side_total)
                elif behind is not None:
                    behind.add(index, finished[2])
                if collect and single_plane:
                    labels, probability = plane_labels[np.newaxis], plane_probability[np.newaxis]
                elif collect:
                    labels[index], probability[index] = plane_labels, plane_probability
                yield PredictProgress(index, len(planes), total, total, plane_labels, plane_probability)
                if behind is not None:
                    yield from chunks(behind.finished(), index)
            if behind is not None:
                yield from chunks(behind.rest(), index)
    finally:
        if behind is not None:  # stopped or failed: a chunk being labelled is let finish
            behind.close()
    if diameter is None and model.object_diameter:
        diameter = model.object_diameter / factor
    if not collect:
        return Prediction(None, None, factor, diameter)
    shape = stack_shape + (height, width)
    return Prediction(labels.reshape(shape), probability.reshape(shape), factor, diameter)


class _LabelledBehind:
    """A :class:`~napari_unet.core.volume.VolumeLabeller` whose chunks are labelled in a thread of their own.

    The network predicts the next planes while a chunk is labelled: on 2 CPU cores
    labelling a chunk took as long as predicting its planes, with one core idle. One
    chunk is labelled at a time, in order, as the memory plan (:func:`_volume_labeller`)
    has room for one chunk's labelling beside a plane's prediction.

    Args:
        labeller: The labeller.
        finish: Called with each chunk's ``(first, labels)`` in the thread, once labelled.
    """

    def __init__(self, labeller: VolumeLabeller, finish: Callable[[tuple[int, np.ndarray]], None]):
        self._labeller, self._finish = labeller, finish
        self._running: _InThread | None = None
        self._ready: list[tuple[int, np.ndarray]] = []

    def add(self, index: int, classes: np.ndarray) -> None:
        """Take a plane's classes; a chunk it completes starts being labelled, once the one before is."""
        chunk = self._labeller.take(index, classes)
        if chunk is not None:
            self._collect(wait=True)
            self._running = _InThread(self._labelled, chunk)

    def _labelled(self, chunk) -> tuple[int, np.ndarray]:
        done = self._labeller.label(chunk)
        self._finish(done)
        return done

    def _collect(self, wait: bool) -> None:
        if self._running is not None and (wait or self._running.done()):
            running, self._running = self._running, None
            self._ready.append(running.result())

    def finished(self) -> list[tuple[int, np.ndarray]]:
        """The chunks labelled since last asked, in order (a labelling's error is raised here)."""
        self._collect(wait=False)
        ready, self._ready = self._ready, []
        return ready

    def rest(self) -> list[tuple[int, np.ndarray]]:
        """:meth:`finished`, once the chunk being labelled is done too."""
        self._collect(wait=True)
        return self.finished()

    def close(self) -> None:
        """Wait for a chunk being labelled (stopped or failed: nobody wants it)."""
        if self._running is not None:
            self._running.wait()
            self._running = None


class _SeenFromTheSide:
    """Gives a labeller each volume's planes averaged with its side views (:mod:`~napari_unet.core.views`).

    Holds the class probabilities of a volume's planes until its last plane is in, then
    predicts its XZ and YZ views from the stack's intensities (read again, a plane at a
    time, on the grid the volume is labelled on) and gives the labeller the average.

    Args:
        behind: The labeller, whole volumes at a time.
        model, settings: How the planes were predicted.
        planes: The stack's planes, as prediction reads them.
        depth: Planes of a volume.
        normalize: The stack's normalization.
        factor: The planes' scale for the network.
        z_scale: The z step over the pixel width.
    """

    def __init__(self, behind: _LabelledBehind, model: Model, settings: PredictionSettings, planes, depth: int,
                 normalize: Callable[[np.ndarray], np.ndarray], factor: float, z_scale: float):
        self._behind, self._planes, self._depth, self._normalize = behind, planes, depth, normalize
        self._scale = factor / labelling_factor(factor)  # the network's pixels per pixel of the labelling grid
        self._z_scale = z_scale * labelling_factor(factor)  # the z step in pixels of the labelling grid
        plain = settings.replace(test_time_augmentation=False)
        self._predict_plane = lambda plane: _stitched_probabilities(model.network, plane, plain)
        self._classes: np.ndarray | None = None

    def add(self, index: int, classes: np.ndarray) -> Iterator[tuple[int, int]]:
        """Take a plane's classes; at a volume's last plane, predict its side views (yielding progress) and label it."""
        plane = index % self._depth
        if self._classes is None:
            self._classes = np.empty((self._depth, *classes.shape), np.float16)
        self._classes[plane] = classes
        if plane < self._depth - 1:
            return
        first = index - plane
        grid = classes.shape[-2:]
        volume = np.stack([resize_plane(self._normalize(self._planes[first + z]), grid)[0] for z in range(self._depth)])
        sides = yield from side_view_probabilities(volume, self._z_scale, self._scale, self._predict_plane)
        del volume
        combined = combined_views(self._classes, sides)
        self._classes = None
        for z, averaged in enumerate(combined):
            self._behind.add(first + z, averaged)

    def finished(self) -> list[tuple[int, np.ndarray]]:
        return self._behind.finished()

    def rest(self) -> list[tuple[int, np.ndarray]]:
        return self._behind.rest()

    def close(self) -> None:
        self._behind.close()


def _trim_axial_blur_of(completed: tuple[int, np.ndarray], planes: np.ndarray, depth: int,
                        normalize: Callable[[np.ndarray], np.ndarray]) -> None:
    """:func:`~napari_unet.core.volume.trim_axial_blur` on a chunk of a volume's labels, ``(first plane, labels)``.

    Its intensities are the stack's ``planes`` as the network read them (one range for
    the stack; a model that reads the image inverted sees its objects bright), a plane
    at a time.
    """
    first, labels = completed
    intensities = (normalize(planes[first + index]).mean(axis=0) for index in range(len(labels)))
    trim_axial_blur(labels, intensities, open_start=first % depth > 0, open_end=(first + len(labels)) % depth > 0)


#: The share of the memory available that a volume's plan leaves to what it does not
#: count: the allocator's fragments between the network's thread and the labelling's,
#: the files read and written. A 100 x 2048 x 2048 stack planned to the last byte of 3 GiB
#: peaked at 3.03 GiB.
UNPLANNED_MEMORY = 0.1

#: What labelling a voxel in 3D costs against the network's prediction of a pixel, in CPU
#: time (2-core AMD EPYC, float32: 1.2 s of one core for a 2048 x 2048 plane against 4.3
#: s of two): the weight :func:`_volume_plan` gives the labelling's work beside the
#: network's tiles.
LABELLING_COST = 0.14


def _volume_plan(model: Model, settings: PredictionSettings, stack_shape: tuple[int, ...], height: int, width: int,
                 factor: float, z_scale: float, collect: bool) -> tuple[PredictionSettings, VolumeLabeller, bool]:
    """The network's tile size and the labeller of a stack's volumes, planned together for the memory available.

    On a CPU the network's tiles and the labelling share main memory: larger tiles
    predict less context twice (a 2048 x 2048 plane in one tile rather than 2 x 2 tiles
    of 1248 or 3 x 3 of 912, which predict 1.5 and 1.8 times its pixels), and leave less
    room to label in (shallower chunks and narrower blocks, which label more voxels
    again). Each tiling of the planes, from one tile down to the default tile size
    (:func:`default_tile_size`), is weighed by the pixels its tiles predict per pixel and
    the voxels its labeller labels per voxel (:func:`_volume_labeller`), the latter at
    :data:`LABELLING_COST`; the cheapest is kept for every plane, so that the plan holds.
    Elsewhere (a GPU, whose tiles lie in its own memory, or a tile size given) the tiles
    are as they are.

    Returns:
        The settings, with the tile size chosen, the labeller, and whether the volumes are
        seen from the side too (:mod:`~napari_unet.core.views`).

    Raises:
        InputError: If no tiling leaves room to label the volumes (:func:`_volume_labeller`).
    """
    arguments = (stack_shape, height, width, factor, z_scale, collect)
    if settings.tile_size is not None or resolve_device(settings.device).type != "cpu":
        labeller, _, side_views = _volume_labeller(model, settings, *arguments)
        _say_plan(labeller, None, side_views)
        return settings, labeller, side_views
    network = model.network
    grid = scaled_shape((height, width), factor)
    best, refusal = None, None
    for tile in _tilings(network, grid):
        candidate = settings.replace(tile_size=tile)
        try:
            labeller, work, side_views = _volume_labeller(model, candidate, *arguments)
        except InputError as error:
            refusal = error
            continue
        rows, columns = (_axis_tiling(network, length, tile) for length in grid)
        predicted = rows.count * rows.tile * columns.count * columns.tile / (grid[0] * grid[1])
        cost = predicted + LABELLING_COST * work
        if best is None or cost < best[0]:
            best = (cost, candidate, labeller, side_views)
    if best is None:
        raise refusal
    _, settings, labeller, side_views = best
    _say_plan(labeller, settings.tile_size, side_views)
    return settings, labeller, side_views


def _tilings(network: UNet, grid: tuple[int, int]) -> list[int]:
    """Tile sizes that cut a plane of ``grid`` into one tile, two a side, three..., down to the default tile size."""
    default = default_tile_size(network, torch.device("cpu"))
    longest = max(grid)
    sizes = []
    for count in range(1, longest // network.size_multiple + 2):
        if count == 1:
            tile = network.valid_input_size(longest + 2 * image_border(network))
        else:
            step = math.ceil(longest / count / network.size_multiple) * network.size_multiple
            tile = network.valid_input_size(step + 2 * network.context)
        if tile <= CPU_TILE_SIZE and (not sizes or tile < sizes[-1]):
            sizes.append(tile)
        if tile <= default or tile <= smallest_tile(network):
            break
    return sizes


def _say_plan(labeller: VolumeLabeller, tile_size: int | None, side_views: bool) -> None:
    """Log how the volumes are labelled, and the network's tiles when planned with them."""
    chunks = "whole, seen from the side too" if side_views else "whole, through their planes alone"
    chunks = chunks if labeller.core >= labeller.depth else (
        f"in chunks of {labeller.core + 2 * labeller.halo} planes ({2 * labeller.halo} of them overlapping)")
    blocks = "" if labeller.tile is None else f", in blocks of {labeller.tile} x {labeller.tile} pixels"
    tiles = "" if tile_size is None else f"; the network predicts tiles of up to {tile_size} x {tile_size} pixels"
    logger.info("labelling the volumes %s%s%s", chunks, blocks, tiles)


def _volume_labeller(model: Model, settings: PredictionSettings, stack_shape: tuple[int, ...], height: int,
                     width: int, factor: float, z_scale: float, collect: bool
                     ) -> tuple[VolumeLabeller, float, bool]:
    """The labeller of a stack's volumes, planned for the memory available
    (:class:`~napari_unet.core.volume.VolumeLabeller`), the voxels it labels per voxel it
    gives, and whether the volumes are seen from the side too (:mod:`~napari_unet.core.views`).

    Whole volumes with their side views where they fit (unless the settings' views are
    ``"xy"``), else whole volumes, else chunks of as many whole planes as
    fit, else chunks labelled in blocks of planes, as deep and as wide as label the
    fewest voxels again (:func:`_chunks_in_blocks`). Labelling takes
    :data:`~napari_unet.core.volume.BYTES_PER_VOXEL` a voxel of what it labels at once, and
    a chunk held :data:`~napari_unet.core.volume.HELD_BYTES_PER_VOXEL`, on the grid it is
    made on, beside what predicting a plane holds (:func:`_plane_prediction_bytes`) and the
    whole stack's labels and probability (8 bytes a voxel) when they are collected.

    Raises:
        InputError: If not even blocks of :data:`~napari_unet.core.volume.SMALLEST_BLOCK_HALOS`
            margins fit, or the settings' views are ``"xyz"`` and the volume with its
            side views does not.
    """
    depth = stack_shape[-1]
    arguments = (depth, (height, width), factor, z_scale, settings.threshold, settings.min_size, model.gap,
                 model.object_diameter)
    whole = VolumeLabeller(*arguments)
    grid = scaled_shape((height, width), labelling_factor(factor))
    plane_voxels = grid[0] * grid[1]
    # Held beside the labelling: the stack's results when collected, and each plane's
    # prediction, which comes back between chunks, and whose memory the allocator keeps.
    beside = math.prod(stack_shape) * height * width * 8 if collect else 0
    beside += _plane_prediction_bytes(model.network, settings, scaled_shape((height, width), factor))
    free = int(available_memory() * (1 - UNPLANNED_MEMORY)) - beside
    if settings.views != "xy" and depth * plane_voxels * (BYTES_PER_VOXEL + SIDE_VIEW_BYTES_PER_VOXEL) <= free:
        return whole, 1.0, True
    if settings.views == "xyz":
        needed = depth * plane_voxels * (BYTES_PER_VOXEL + SIDE_VIEW_BYTES_PER_VOXEL) + beside
        raise InputError(f"the side views of a z-stack need it whole, about {needed / 2**30:.1f} GB of memory "
                         f"here, and {(free + beside) / 2**30:.1f} GB are free: label it through its planes alone "
                         "(views 'xy' or 'auto'), or crop it")
    if depth * plane_voxels * BYTES_PER_VOXEL <= free:
        return whole, 1.0, False
    window = int(free // (plane_voxels * BYTES_PER_VOXEL))
    smallest = SMALLEST_CHUNK_HALOS * whole.halo
    if window >= smallest:
        return VolumeLabeller(*arguments, window=window), _labelled_per_given(window, depth, whole.halo), False
    margin = whole.tile_halo
    planned = _chunks_in_blocks(free, plane_voxels, depth, whole.halo, margin)
    if planned is None:
        window = min(smallest, depth)
        needed = window * (plane_voxels * HELD_BYTES_PER_VOXEL + (SMALLEST_BLOCK_HALOS + 2) ** 2 * margin**2
                           * BYTES_PER_VOXEL) + beside
        raise InputError(f"labelling this z-stack in 3D needs about {needed / 2**30:.1f} GB of memory "
                         f"({window} planes of {height} x {width} held at once), and "
                         f"{(free + beside) / 2**30:.1f} GB are free: crop it (in z, or to the region of interest), "
                         "or predict its planes one by one")
    window, tile = planned
    work = _labelled_per_given(window, depth, whole.halo, tile, margin)
    if window < depth:
        return VolumeLabeller(*arguments, window=window, tile=tile), work, False
    return VolumeLabeller(*arguments, tile=tile), work, False


def _labelled_per_given(window: int, depth: int, halo: int, tile: int | None = None, margin: int = 0) -> float:
    """Voxels labelled per voxel given by chunks of ``window`` planes in blocks of ``tile`` pixels (None: whole planes).

    A chunk labels its halos again for the next chunk, and a block its margin for its
    neighbours.
    """
    middle = depth if window >= depth else window - 2 * halo
    blocks = 1.0 if tile is None else ((tile + 2 * margin) / tile) ** 2
    return min(window, depth) / middle * blocks


def _chunks_in_blocks(free: int, plane_voxels: int, depth: int, halo: int, margin: int) -> tuple[int, int] | None:
    """The chunk depth and block edge that label a volume's planes with the least work in ``free`` bytes.

    A chunk labels its halos again for the next chunk, and a block its margin for its
    neighbours (:func:`_labelled_per_given`): deeper chunks redo fewer planes, but hold
    more planes and leave room for narrower blocks only. Of the depths from
    :data:`~napari_unet.core.volume.SMALLEST_CHUNK_HALOS` halos up, the one with the
    fewest voxels labelled per voxel given is chosen (with 1.45 GB to label 2048 x 2048
    planes in: chunks of 41 planes in blocks of about 300 pixels label 1.6 voxels per
    voxel, where the smallest chunks would label 2.1).

    Args:
        free: Bytes for the chunk's planes and a block's labelling.
        plane_voxels: Voxels of a plane on the labelling grid.
        depth: Planes of a volume.
        halo, margin: The labeller's halo in z and margin around blocks.

    Returns:
        ``(window, tile)``, or None if not even the smallest chunks in blocks of
        :data:`~napari_unet.core.volume.SMALLEST_BLOCK_HALOS` margins fit.
    """
    best = None
    for window in range(min(SMALLEST_CHUNK_HALOS * halo, depth), depth + 1):
        room = free - window * plane_voxels * HELD_BYTES_PER_VOXEL
        tile = int(math.sqrt(max(room, 0) / (window * BYTES_PER_VOXEL))) - 2 * margin
        if tile < SMALLEST_BLOCK_HALOS * margin:  # deeper chunks leave narrower blocks still
            break
        work = _labelled_per_given(window, depth, halo, tile, margin)
        if best is None or work < best[0]:
            best = (work, window, tile)
    return None if best is None else best[1:]


def checked_z_scale(z_scale: float | None) -> float:
    """The z step of a volume in pixels, as 3D labels take it; None becomes 1, with a warning.

    Raises:
        InputError: If ``z_scale`` is not a positive number.
    """
    if z_scale is None:
        warnings.warn("the z step of the stack is not known; it is taken as one pixel width (give the voxel size "
                      "if the planes lie further apart, as they usually do)", ImageWarning, stacklevel=3)
        return 1.0
    try:
        z_scale = float(z_scale)
    except (TypeError, ValueError):
        raise InputError(f"the z step is a number of pixels, not {z_scale!r}") from None
    if not (math.isfinite(z_scale) and z_scale > 0):
        raise InputError(f"the z step must be a positive number of pixels, not {z_scale:g}")
    return z_scale


def _estimate_plane_diameter(model: Model, plane: np.ndarray, settings: PredictionSettings) -> float | None:
    """Median object diameter in one ``(channels, H, W)`` plane, from predictions (see :func:`_confirmed_diameter`)."""
    if not model.object_diameter:
        raise InputError("this model does not record the object size it was trained on; it cannot estimate diameters")

    normalized = normalization_for(model.normalization, settings.intensity_range)(plane)
    # Each scale is predicted once, plainly: the estimate needs sizes, not the finest outlines.
    plain = settings.replace(compile_network=False, test_time_augmentation=False)

    def labelled_at(factor: float) -> tuple[np.ndarray, np.ndarray]:
        """Labels and foreground probability of the plane predicted at ``factor`` of its size."""
        shape = scaled_shape(plane.shape[-2:], factor)
        probabilities = run_to_end(_stitched_probabilities(model.network, resize_plane(normalized, shape), plain))
        return _labelled(model, probabilities, shape, settings.threshold, settings.min_size, 1.0,
                         _labels_on_the_device(probabilities, shape))

    labels, probability = labelled_at(1.0)
    unfamiliar = unfamiliar_image_message(model, labels, probability)
    if unfamiliar:
        # Specks of texture would be taken for objects and the image rescaled to them
        # (a 1000x1000 H&E image to `nuclei`: 5.4 pixels, 3x larger, 41 s).
        warnings.warn(f"no diameter estimated: {unfamiliar}", ImageWarning, stacklevel=3)
        return None

    def measured(factor: float) -> float | None:
        found = object_diameter(labels if factor == 1.0 else labelled_at(factor)[0])
        return None if found is None else found / factor

    return _confirmed_diameter(model, measured)


def _estimate_volume_diameter(model: Model, planes: np.ndarray, settings: PredictionSettings,
                              z_scale: float) -> float | None:
    """Median object diameter (pixels of a plane) in a ``(Z, channels, H, W)`` volume, from its 3D labels.

    A volume is measured as it will be labelled: a central block of it (at most
    :data:`SIZING_BLOCK` planes and pixels a side, narrower by the factor a scale
    enlarges it by) is labelled in 3D at each scale :func:`_confirmed_diameter` asks for,
    and each object counts with its widest plane.
    Planes alone mislead: a plane cuts most nuclei off their middle, and dense volumes
    of noisy nuclei look unlike the model's images plane by plane, as their maximum
    projection does (on the shared plant nuclei, 21.6 and 19.7 pixels wide, both gave no
    estimate, and their 3D AP50 without one was 0.21 and 0.12).
    """
    if not model.object_diameter:
        raise InputError("this model does not record the object size it was trained on; it cannot estimate diameters")
    depth, _, height, width = planes.shape
    most_planes, most_pixels = SIZING_BLOCK
    # Through the planes alone: an object's widest plane is what is measured.
    plain = settings.replace(compile_network=False, test_time_augmentation=False, views="xy")

    def measured(factor: float) -> float | None:
        # Enlarged for the network, the block is narrower: the same work, objects alike.
        side = max(int(most_pixels / max(factor, 1.0)), 1)
        z0, y0, x0 = ((length - min(length, most)) // 2 for length, most in
                      ((depth, most_planes), (height, side), (width, side)))
        block = planes[z0:z0 + most_planes, :, y0:y0 + side, x0:x0 + side]
        # Its 3D labels as prediction makes them, before their blur is trimmed in z: an
        # object's widest plane is what is measured.
        labeller, _, _ = _volume_labeller(model, plain, (len(block),), *block.shape[-2:], factor, z_scale, True)
        labels = np.zeros((len(block), *block.shape[-2:]), np.int32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageWarning)  # the prediction that follows says it, if at all
            for index, _, _, finished in predict_planes_iter(model, ((plane, factor) for plane in block), plain,
                                                             keep_classes=True):
                completed = None if finished is None else labeller.add(index, finished[2])
                if completed is not None:
                    labels[completed[0]:completed[0] + len(completed[1])] = completed[1]
        widest = widest_areas(labels)
        # Objects the block cuts off at its sides would count small.
        sides = (([labels[:, 0], labels[:, -1]] if height > side else [])
                 + ([labels[:, :, 0], labels[:, :, -1]] if width > side else []))
        for cut in sides:
            widest[cut] = 0
        widest[0] = 0
        areas = widest[widest > 0]
        return float(np.median(circle_diameters(areas))) if areas.size else None

    return _confirmed_diameter(model, measured)


def _confirmed_diameter(model: Model, measure: Callable[[float], float | None]) -> float | None:
    """The object diameter that predictions at the scale it asks for confirm.

    Objects much larger than the model's break into fragments of about the model's own
    size, so a prediction at the model's scale can look right while being far off. Two
    first estimates are therefore made, at the model's scale and at half of it (where
    such objects come out whole, or in fewer pieces), and each is checked by predicting
    again at the scale it asks for: an estimate is kept when that prediction confirms it
    (within 25 %); one that moved is checked again at its new scale, a few times, since
    objects still twice the model's size at half scale come out somewhat fragmented.
    Of two kept estimates the larger is the true size (the other comes from fragments).

    Args:
        model: The model, which records the object diameter of its training data.
        measure: The median object diameter, in the image's pixels, that a prediction
            of the image resized by a factor finds (None: no objects).

    Returns:
        The estimate; None when no objects were found, or only objects too small or too
        large to rescale to the model's size (an empty field's specks of noise).
    """
    measurements: dict[float, float | None] = {}  # by scale factor

    def measured(factor: float) -> float | None:
        # A scale within 10 % of one already predicted gives about the same objects: reuse
        # it (objects near the model's size then cost two or three predictions, not four).
        for done, found in measurements.items():
            if abs(factor / done - 1) < 0.1:
                return found
        measurements[factor] = measure(factor)
        return measurements[factor]

    def checked(first: float, checks: int = 3) -> tuple[float, bool]:
        estimate = first
        for _ in range(checks):
            found = measured(min(max(model.object_diameter / estimate, 1 / 8), 8))
            if found is None:
                return estimate, False
            if abs(found / estimate - 1) < 0.25:
                return found, True
            estimate = found
        return estimate, False

    candidates = [checked(first) for first in (measured(1.0), measured(0.5)) if first is not None]
    confirmed = [estimate for estimate, agrees in candidates if agrees]
    estimate = max(confirmed) if confirmed else candidates[0][0] if candidates else None
    if estimate is not None and not usable_diameter(model, estimate):
        # Far from the model's size: specks of noise in an empty field, not the objects.
        logger.info("estimated object diameter %.1f px, too far from the model's to use", estimate)
        return None
    return estimate


def estimate_diameter(model: Model, image: np.ndarray, settings: PredictionSettings | None = None, *,
                      channel_axis: int | None = None, volume: bool = False, z_scale: float | None = None,
                      **options) -> float | None:
    """Typical object diameter (pixels) in the first plane of ``image``, or its first volume, estimated by the model.

    Args:
        model: A model that records the object diameter of its training data.
        image: Image or stack (only its first plane, or first volume, is looked at).
        settings: How to predict (None: the defaults); its tiling, device, precision,
            threshold, smallest object size and intensity range are used.
        channel_axis: Channel axis of a multi-channel image, if not guessed right.
        volume: Measure the objects of a z-stack in 3D, as ``predict(volume=True)``
            labels them: the last axis before height and width is Z.
        z_scale: The z step of a volume in pixels (None: 1, with a warning).
        **options: Settings to change, by their names in :class:`PredictionSettings`.

    Returns:
        The median diameter of the objects found (of a volume's objects, each at its
        widest plane); None when none were found, or only objects too small or too large
        to rescale to the model's size (an empty field's specks of noise).

    Raises:
        InputError: With ``volume``, if the image has one plane or ``z_scale`` is not a
            positive number.
    """
    settings = PredictionSettings.of(settings, **options)
    model = as_model(model).for_image(image, channel_axis)
    planes, stack_shape = as_planes(image, model.config.in_channels, channel_axis, model.normalization.colour)
    settings = settled_for(model, settings)
    if not volume:
        return _estimate_plane_diameter(model, planes[0], settings)
    z_scale = checked_z_scale(z_scale)
    if not stack_shape or stack_shape[-1] < 2:
        raise InputError("a volume's object diameter is measured on a z-stack of two planes or more; this image has "
                         "one plane")
    if settings.intensity_range is None:
        settings = settings.replace(intensity_range=model.normalization.range_of(planes))  # as predict() scales it
    return _estimate_volume_diameter(model, planes[:stack_shape[-1]], settings, z_scale)


def predict(model: Model, image: np.ndarray, on_progress: Callable | None = None, **kwargs) -> Prediction:
    """Synchronous :func:`predict_iter`; ``on_progress`` is called with each progress."""
    return run_to_end(predict_iter(model, image, **kwargs), on_progress)
