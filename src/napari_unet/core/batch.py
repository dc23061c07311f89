"""Segmenting many TIFF stacks, or one chunked array, plane by plane with one model.

:func:`predict_files_iter` is the engine behind ``napari-unet predict`` and the napari
Batch widget. It streams: each file's pages are read when they are predicted and each
result page is written as soon as it is done, so memory does not grow with a stack's
length. It is safe to interrupt: results are written under a temporary name and renamed
when complete, and a rerun skips the results that exist. An unreadable input is reported
and the others still run; no input is ever written over.

Planes are predicted by an executor: :class:`LocalExecutor` in this process, or
:class:`~napari_unet.core.distributed.DaskExecutor` on a Dask cluster. Both call
:func:`~napari_unet.core.predict.predict_iter` on the same planes, so they give the same
labels. :func:`predict_array_iter` does the same for a numpy, Zarr or Dask array.
:func:`predict_files` and :func:`predict_array` are the plain synchronous wrappers.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .bundle import Model
from .errors import InputError, NapariUnetError
from .io import ImageInfo, collect_tiffs
from .normalize import as_planes
from .predict import PredictProgress, estimate_diameter, predict_iter, predict_planes_iter
from .progress import run_to_end
from .registry import as_model
from .scale import scale_factor
from .tiffstream import PageTiffWriter, TiffMetadata, TiffPageReader, partial_path
from .units import in_unit

__all__ = [
    "FileProgress", "FileResult", "BatchResult", "PlaneResult", "PlaneExecutor", "LocalExecutor",
    "output_paths", "predict_plane", "predict_files_iter", "predict_files", "predict_array_iter", "predict_array",
]

logger = logging.getLogger(__name__)

#: One unit of prediction: the pixels of one output plane and the axis holding their channels.
Unit = tuple[np.ndarray, "int | None"]


@dataclass(frozen=True)
class FileProgress:
    """Where a batch is: file ``file`` (0-based) of ``files``, and the plane progress in it.

    Attributes:
        file: Index of the file being segmented.
        files: Inputs in the batch.
        path: The file being segmented.
        plane: Progress within the file (``plane.planes`` output planes).
        planes_done: Planes written so far in this batch, all files together.
        planes_total: Planes of the whole batch, counted from the files' headers when it
            started (inputs to skip or that cannot be read count none).
    """

    file: int
    files: int
    path: Path
    plane: PredictProgress
    planes_done: int = 0
    planes_total: int = 0

    @property
    def fraction(self) -> float:
        """Share of the batch's planes done, counting the current plane's tiles."""
        plane = self.plane
        within = plane.done / plane.total if plane.total and plane.done < plane.total else 0.0
        return min(1.0, (self.planes_done + within) / self.planes_total) if self.planes_total else 0.0


@dataclass(frozen=True)
class FileResult:
    """What happened to one input.

    Attributes:
        path: The input.
        output: The label file (None if the input failed).
        planes: Planes segmented.
        objects: Objects found, summed over the planes (each plane numbers its own).
        seconds: Time spent on this input.
        error: Why the input failed, in plain words.
        skipped: The output existed already and was kept.
    """

    path: Path
    output: Path | None
    planes: int = 0
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False


@dataclass
class BatchResult:
    """The inputs of a batch, in order; ``cancelled`` if it was stopped before the last one."""

    files: list[FileResult] = field(default_factory=list)
    cancelled: bool = False

    @property
    def failed(self) -> list[FileResult]:
        return [result for result in self.files if result.error is not None]

    @property
    def skipped(self) -> list[FileResult]:
        return [result for result in self.files if result.skipped]


@dataclass(frozen=True)
class PlaneResult:
    """The prediction of unit ``index``: its labels, and its probability when asked for."""

    index: int
    labels: np.ndarray
    probability: np.ndarray | None


class PlaneExecutor(Protocol):
    """Predicts a stream of units in order (see :class:`LocalExecutor`)."""

    def predict_units(
        self, model: Model, units: Iterable[Unit], options: dict, probability: bool
    ) -> Iterator[tuple[int, int, int] | PlaneResult]:
        """Yield ``(index, done, total)`` progress within a unit and a :class:`PlaneResult` per unit, in order."""


def predict_plane(model: Model, pixels: np.ndarray, channel_axis: int | None, options: dict,
                  probability: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probability) of one unit: what a Dask worker runs for each plane.

    Args:
        model: The model.
        pixels: One plane, with its channel axis if it has one.
        channel_axis: The channel axis of ``pixels``, or None.
        options: Keywords of :func:`~napari_unet.core.predict.predict_iter`.
        probability: Also return the foreground probability.
    """
    prediction = run_to_end(predict_iter(model, pixels, channel_axis=channel_axis, **options))
    return prediction.labels, prediction.probability if probability else None


class LocalExecutor:
    """Predicts the units one after the other in this process, reporting every batch of tiles.

    A unit's labels are made while the next unit goes through the network
    (:func:`~napari_unet.core.predict.predict_planes_iter`).
    """

    def predict_units(self, model: Model, units: Iterable[Unit], options: dict,
                      probability: bool) -> Iterator[tuple[int, int, int] | PlaneResult]:
        options = dict(options)
        factor = scale_factor(model, options.pop("diameter", None), options.pop("pixel_size", None))
        # The same computation as predict_plane, over the whole stream of units.
        planes = (_only_plane(model, pixels, channel_axis) for pixels, channel_axis in units)
        with closing(predict_planes_iter(model, planes, factor, **options)) as planes_done:
            for index, done, total, finished in planes_done:
                if finished is None:
                    yield index, done, total
                else:
                    labels, plane_probability = finished
                    yield PlaneResult(index, labels, plane_probability if probability else None)


def _only_plane(model: Model, pixels: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """The ``(channels, H, W)`` plane of a unit."""
    planes, _ = as_planes(pixels, model.config.in_channels, channel_axis)
    if len(planes) != 1:
        raise ValueError(f"a unit must be one plane, not {len(planes)}")
    return planes[0]


@dataclass(frozen=True)
class _UnitPlan:
    """How the pages (or planes) of an input make the units that are predicted.

    A unit is one page, or, for a model that takes several channels from separate pages,
    the pages of one plane across the channel axis; its result is one output page.
    """

    leading_shape: tuple[int, ...]
    channel_leading_axis: int | None  # leading axis whose pages are one unit's channels
    unit_channel_axis: int | None  # channel axis within a unit, as predict_iter takes it
    out_leading_shape: tuple[int, ...]
    out_axes: str

    @property
    def units(self) -> int:
        return math.prod(self.out_leading_shape)

    def page_indices(self, unit: int) -> list[int]:
        """The input pages of unit ``unit``, in channel order."""
        index = list(np.unravel_index(unit, self.out_leading_shape)) if self.out_leading_shape else []
        if self.channel_leading_axis is None:
            return [int(np.ravel_multi_index(index, self.leading_shape))] if index else [0]
        pages = []
        for channel in range(self.leading_shape[self.channel_leading_axis]):
            full = index[: self.channel_leading_axis] + [channel] + index[self.channel_leading_axis :]
            pages.append(int(np.ravel_multi_index(full, self.leading_shape)))
        return pages


def _plan_units(name: str, axes: str, leading_shape: tuple[int, ...], page_axes: str, page_shape: tuple[int, ...],
                in_channels: int, channel_axis: int | None = None) -> _UnitPlan:
    """Plan the units of an input whose pages have ``page_axes`` (YX, YXS or SYX).

    Args:
        name: The input, for messages.
        axes: Axes of the whole input (leading axes, then the page's).
        leading_shape: Shape of the axes that index pages.
        page_axes: Axes of one page.
        page_shape: Shape of one page.
        in_channels: Channels the model takes.
        channel_axis: Leading axis holding the channels, if the caller knows it.

    Raises:
        InputError: If the input's channels cannot be given to the model.
    """
    if page_axes not in ("YX", "YXS", "SYX"):
        raise InputError(f"{name}: pages with axes {page_axes} are not supported (need YX, or RGB samples)")
    leading_axes = axes[: len(leading_shape)]
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
            raise InputError(f"{name}: channel axis {channel_axis} is not one of its plane axes {leading_axes}")
        unit_channel_axis = 0
    out_leading = tuple(length for axis, length in enumerate(leading_shape) if axis != channel_axis)
    out_axes = "".join(letter for axis, letter in enumerate(leading_axes) if axis != channel_axis)
    return _UnitPlan(tuple(leading_shape), channel_axis, unit_channel_axis, out_leading, out_axes + "YX")


def output_paths(files: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 probability: bool = False) -> list[tuple[Path, Path | None]]:
    """The label file (and probability file) written for each input.

    Outputs are named like their inputs, with ``.tif``, in ``out_dir``. When two inputs
    would get the same output name (``a/cells.tif`` and ``b/cells.tif``), every output
    keeps its input's folders below the inputs' common folder (``out/a/cells.tif``).

    Raises:
        InputError: If two inputs would still be written to the same file, or an output
            would be an input.
    """
    files = [Path(f) for f in files]
    out_dir = Path(out_dir)

    def name(path: Path, folder: Path) -> tuple[Path, Path | None]:
        labels = folder / f"{path.stem}.tif"
        return labels, (folder / f"{path.stem}_probability.tif" if probability else None)

    paths = [name(path, out_dir) for path in files]
    if _first_clash(paths) is not None and len(files) > 1:
        parents = [path.resolve().parent for path in files]
        root = Path(os.path.commonpath(parents))
        paths = [name(path, out_dir / parent.relative_to(root)) for path, parent in zip(files, parents)]
    clash = _first_clash(paths)
    if clash is not None:
        first, second, target = clash
        raise InputError(f"{files[first]} and {files[second]} would both be written to {target}; rename one of them")
    inputs = {path.resolve() for path in files}
    for labels, probability_path in paths:
        for target in (labels, probability_path):
            if target is not None and (target.resolve() in inputs or partial_path(target).resolve() in inputs):
                raise InputError(f"the output {target} would overwrite an input; choose another output folder")
    return paths


def _first_clash(paths: list[tuple[Path, Path | None]]) -> tuple[int, int, Path] | None:
    owner: dict[Path, int] = {}
    for index, targets in enumerate(paths):
        for target in targets:
            if target is None:
                continue
            key = target.resolve()
            if key in owner:
                return owner[key], index, target
            owner[key] = index
    return None


class _LabelsOverflow(InputError):
    """A plane has more objects than the labels' integer type can number."""


class _Stopped(Exception):
    """The caller's stop event was set; the current output is discarded."""


#: Keywords of :func:`~napari_unet.core.predict.predict_iter` that the diameter estimate also takes.
_ESTIMATE_OPTIONS = ("tile_size", "batch_size", "device", "amp", "threshold", "min_size")


def _resolve_options(model: Model, options: dict, first_unit: Unit | None, info: ImageInfo | None,
                     name: str) -> dict:
    """The predict options for one input, the same for all its planes and on every executor.

    ``diameter="auto"`` is estimated once, from the input's first plane (as
    :func:`~napari_unet.core.predict.predict_iter` does for a stack). Without a diameter
    or a pixel size, the input's pixel size is used when the model records its own, in
    the same unit.
    """
    options = dict(options)
    if options.get("diameter") == "auto" and first_unit is not None:
        pixels, channel_axis = first_unit
        estimate = estimate_diameter(model, pixels, channel_axis=channel_axis,
                                     **{key: options[key] for key in _ESTIMATE_OPTIONS if key in options})
        logger.info("%s: estimated object diameter %s", name, "none (no objects)" if estimate is None
                    else f"{estimate:.1f} px")
        options["diameter"] = estimate
    if (options.get("diameter") is None and options.get("pixel_size") is None and model.pixel_size
            and info is not None and info.pixel_size is not None):
        pixel_size = in_unit(info.pixel_size, info.unit, model.pixel_unit)
        if pixel_size is None:
            logger.warning("%s: pixel size in %s, the model's in %s; not rescaled", name, info.unit, model.pixel_unit)
        else:
            options["pixel_size"] = pixel_size
    return options


def _check_options(model: Model, options: dict) -> None:
    """Refuse a diameter or pixel size that the model cannot use before any work starts.

    Raises:
        InputError: As :func:`~napari_unet.core.scale.scale_factor` does.
    """
    diameter, pixel_size = options.get("diameter"), options.get("pixel_size")
    if diameter == "auto":
        if not model.object_diameter:
            raise InputError("this model does not record the object size it was trained on; "
                             "it cannot estimate diameters")
    elif diameter is not None or pixel_size is not None:
        if isinstance(diameter, str):
            raise InputError(f"the diameter must be a number of pixels or 'auto', not {diameter!r}")
        scale_factor(model, diameter, pixel_size)


def _count_units(path: Path, in_channels: int) -> int:
    """Output planes of an input, from its header; 0 if it cannot be read (it fails later, with a message)."""
    try:
        with TiffPageReader(path) as reader:
            return _plan_units(str(path), reader.axes, reader.leading_shape, reader.page_axes, reader.page_shape,
                               in_channels).units
    except NapariUnetError:
        return 0


def predict_files_iter(
    model: Model,
    files: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    probability: bool = False,
    overwrite: bool = False,
    executor: PlaneExecutor | None = None,
    stop: threading.Event | None = None,
    **predict_options,
) -> Iterator[FileProgress]:
    """Segment TIFF files plane by plane; yields progress, returns a :class:`BatchResult`.

    Each output has its input's axes (without the channels the model consumed), page
    order, resolution and ImageJ or OME metadata; labels are uint16 (uint32 if a plane
    has more objects). Stopping (the ``stop`` event, or closing the generator) ends after
    the current batch of tiles and leaves no partial output under a final name; the
    finished outputs stay, and a rerun goes on from there.

    Args:
        model: The model.
        files: Input TIFF files (single images, stacks, ImageJ hyperstacks, OME-TIFF, BigTIFF),
            folders of them or glob patterns, as on the command line; one of these alone
            or a list.
        out_dir: Folder for the label files (created if needed); see :func:`output_paths`.
        probability: Also write ``NAME_probability.tif`` with the foreground probability.
        overwrite: Segment inputs whose outputs exist instead of skipping them.
        executor: Where planes are predicted (default: this process, :class:`LocalExecutor`).
        stop: When set, the batch ends at the next progress step and returns a result
            with ``cancelled`` true.
        **predict_options: Passed to :func:`~napari_unet.core.predict.predict_iter`
            (tile_size, batch_size, threshold, min_size, device, amp, diameter, pixel_size).
            ``diameter="auto"`` is estimated once per file, from its first plane. Without
            a diameter or pixel size, each file's own pixel size is used when the model
            records one. Channel axes come from each file's axes.

    Raises:
        InputError: If outputs would overwrite inputs or each other (checked before any work).
    """
    model = as_model(model)
    if isinstance(files, str | os.PathLike):
        files = [files]
    files = [path for spec in files for path in _input_files(spec)]
    targets = output_paths(files, out_dir, probability)
    _check_options(model, predict_options)
    executor = executor or LocalExecutor()
    result = BatchResult()
    finished = [labels.exists() and (prob is None or prob.exists()) and not overwrite for labels, prob in targets]
    counts = [0 if done else _count_units(path, model.config.in_channels) for path, done in zip(files, finished)]
    planes_total = sum(counts)
    planes_done = 0
    for index, (path, (labels_path, probability_path)) in enumerate(zip(files, targets)):
        if stop is not None and stop.is_set():
            result.cancelled = True
            return result
        if finished[index]:
            result.files.append(FileResult(path, labels_path, skipped=True))
            continue
        start = time.monotonic()

        def wrap(progress: PredictProgress, written: int, index=index, path=path, before=planes_done,
                 total=planes_total) -> FileProgress:
            return FileProgress(index, len(files), path, progress, before + written, total)

        try:
            try:
                planes, objects = yield from _predict_file(
                    model, path, labels_path, probability_path, np.uint16, executor, predict_options, wrap, stop)
            except _LabelsOverflow:
                # Rare enough (over 65535 objects in one plane) to redo the file rather than
                # choose uint32, which ImageJ cannot open, for every file.
                planes, objects = yield from _predict_file(
                    model, path, labels_path, probability_path, np.uint32, executor, predict_options, wrap, stop)
        except _Stopped:
            result.cancelled = True
            return result
        except NapariUnetError as error:
            logger.info("failed: %s", error)
            result.files.append(FileResult(path, None, error=str(error), seconds=time.monotonic() - start))
            planes_total -= counts[index]
            continue
        planes_done += planes
        result.files.append(FileResult(path, labels_path, planes, objects, time.monotonic() - start))
    return result


def _input_files(spec: str | os.PathLike) -> list[Path]:
    """The TIFF files of a folder or glob pattern, as the command line takes them; a file itself."""
    path = Path(spec).expanduser()
    if path.is_dir() or (not path.exists() and glob.has_magic(str(spec))):
        return collect_tiffs(spec)
    return [path]  # a missing file is reported with the others' results


def predict_files(model: Model, files: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  on_progress=None, **kwargs) -> BatchResult:
    """Synchronous :func:`predict_files_iter`; ``on_progress`` is called with each :class:`FileProgress`."""
    return run_to_end(predict_files_iter(model, files, out_dir, **kwargs), on_progress)


def _predict_file(model, path, labels_path, probability_path, label_dtype, executor, options, wrap, stop):
    """Stream one file through the executor into its outputs; returns (planes, objects)."""
    with TiffPageReader(path) as reader, ExitStack() as outputs:
        plan = _plan_units(str(path), reader.axes, reader.leading_shape, reader.page_axes, reader.page_shape,
                           model.config.in_channels)

        def unit(number: int) -> Unit:
            pages = [reader.read_page(page) for page in plan.page_indices(number)]
            return (pages[0] if len(pages) == 1 else np.stack(pages)), plan.unit_channel_axis

        options = _resolve_options(model, options, unit(0) if options.get("diameter") == "auto" else None,
                                   reader.info, str(path))
        out_shape = plan.out_leading_shape + tuple(reader.page_shape[i] for i, a in enumerate(reader.page_axes)
                                                   if a in "YX")
        writers = [outputs.enter_context(PageTiffWriter(labels_path, out_shape, plan.out_axes, label_dtype,
                                                        reader.metadata))]
        if probability_path is not None:
            writers.append(outputs.enter_context(
                PageTiffWriter(probability_path, out_shape, plan.out_axes, np.float32, reader.metadata)))
        units = (unit(number) for number in range(plan.units))
        objects = yield from _stream(model, units, plan.units, executor, options, writers, wrap, stop)
        for writer in writers:
            writer.commit()
    return plan.units, objects


def _stream(model, units, count, executor, options, writers, wrap, stop=None):
    """Predict ``count`` units and write each result as it comes; returns the objects found.

    ``wrap(progress, written)`` makes what is yielded from a plane's progress and the
    number of planes written so far.
    """
    objects = 0
    written = 0
    probability = len(writers) > 1
    events = executor.predict_units(model, units, options, probability)
    try:
        for event in events:
            if isinstance(event, PlaneResult):
                top = int(event.labels.max(initial=0))
                if np.issubdtype(writers[0].dtype, np.integer) and top > np.iinfo(writers[0].dtype).max:
                    raise _LabelsOverflow(f"a plane has {top} objects, more than {writers[0].dtype} labels can number")
                objects += top
                writers[0].write(event.labels)
                if probability:
                    writers[1].write(event.probability)
                written += 1
                yield wrap(PredictProgress(event.index, count, 1, 1), written)
            else:
                unit, done, total = event
                yield wrap(PredictProgress(unit, count, done, total), written)
            if stop is not None and stop.is_set():
                raise _Stopped
    finally:
        # Stopped, failed or closed: let the executor drop the planes nobody will write.
        events.close()
    return objects


def predict_array_iter(
    model: Model,
    array,
    out=None,
    channel_axis: int | None = None,
    executor: PlaneExecutor | None = None,
    stop: threading.Event | None = None,
    **predict_options,
) -> Iterator[PredictProgress]:
    """Segment a large array plane by plane without loading it; yields progress, returns the labels.

    For volumes already in chunked storage: a Zarr array, a Dask array, a numpy memmap.
    Only one plane (a few with a Dask executor) is in memory at a time.

    Args:
        model: The model.
        array: Anything sliced like a numpy array whose last two axes are height and width.
        out: Where the labels go: an array of the result's shape that takes item
            assignment (a Zarr array, a numpy memmap), or a TIFF path (ending in .tif or
            .tiff) written page by page and renamed when complete; None for a new int32
            numpy array (in memory).
        channel_axis: The axis holding the channels, for a model that takes several.
        executor: Where planes are predicted (default: this process).
        stop: When set, prediction ends at the next progress step and returns None
            (planes written to ``out`` so far stay; a TIFF ``out`` is not written).
        **predict_options: Passed to :func:`~napari_unet.core.predict.predict_iter`;
            ``diameter="auto"`` is estimated once, from the first plane.

    Returns:
        ``out`` (the array, or the TIFF path), or the new labels array.

    Raises:
        InputError: If ``out`` has the wrong shape, its dtype cannot hold the labels, or
            it is a path that does not name a TIFF file.
    """
    model = as_model(model)
    shape = tuple(array.shape)
    if len(shape) < 2:
        raise InputError(f"an image needs at least two axes (height, width), got shape {shape}")
    if isinstance(out, str | os.PathLike) and Path(out).suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"a path given as out is written as a TIFF file and must end in .tif or .tiff, not {out}")
    axes = "Q" * (len(shape) - 2) + "YX"
    if channel_axis is not None and channel_axis < 0:
        channel_axis += len(shape)
    plan = _plan_units("the array", axes, shape[:-2], "YX", shape[-2:], model.config.in_channels, channel_axis)
    _check_options(model, predict_options)
    out_shape = plan.out_leading_shape + shape[-2:]
    executor = executor or LocalExecutor()

    def unit(number: int) -> Unit:
        index = list(np.unravel_index(number, plan.out_leading_shape)) if plan.out_leading_shape else []
        if plan.channel_leading_axis is not None:
            index.insert(plan.channel_leading_axis, slice(None))
        return np.asarray(array[tuple(index)]), plan.unit_channel_axis

    options = _resolve_options(model, predict_options, unit(0) if predict_options.get("diameter") == "auto" else None,
                               None, "the array")
    units = (unit(number) for number in range(plan.units))

    def wrap(progress, _written):
        return progress

    try:
        if out is None or not isinstance(out, str | os.PathLike):
            labels = np.zeros(out_shape, np.int32) if out is None else out
            if tuple(labels.shape) != out_shape:
                raise InputError(f"the labels array has shape {tuple(labels.shape)}; it needs {out_shape}")
            yield from _stream(model, units, plan.units, executor, options,
                               [_ArrayPlanes(labels, plan.out_leading_shape)], wrap, stop)
            return labels
        with PageTiffWriter(out, out_shape, plan.out_axes, np.uint32, TiffMetadata()) as writer:
            yield from _stream(model, units, plan.units, executor, options, [writer], wrap, stop)
            return writer.commit()
    except _Stopped:
        return None


def predict_array(model: Model, array, out=None, on_progress=None, **kwargs):
    """Synchronous :func:`predict_array_iter`; ``on_progress`` is called with each progress."""
    return run_to_end(predict_array_iter(model, array, out, **kwargs), on_progress)


class _ArrayPlanes:
    """Writes successive planes into an array, like :class:`PageTiffWriter` into a file."""

    def __init__(self, array, leading_shape: tuple[int, ...]):
        self.array = array
        self.dtype = np.dtype(array.dtype)
        self._leading_shape = leading_shape
        self._written = 0

    def write(self, plane: np.ndarray) -> None:
        index = np.unravel_index(self._written, self._leading_shape) if self._leading_shape else ()
        self.array[tuple(int(i) for i in index)] = plane
        self._written += 1
