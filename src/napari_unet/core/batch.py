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
labels. The executor gets one stream of planes across all files: the next file is read
and predicted while the last planes of one are finished, and a folder of single-plane
images keeps a cluster as busy as a stack does. A file that fails drops out of the
stream alone; files after it that had started are done again.

:func:`predict_array_iter` does the same for a numpy, Zarr or Dask array.
:func:`predict_files` and :func:`predict_array` are the plain synchronous wrappers.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from .. import __version__
from .atomic import writable_folder
from .bundle import Model
from .errors import ClusterError, ImageWarning, InputError, InputWarning, NapariUnetError, warnings_named
from .io import ImageInfo, collect_tiffs, read_tiff, search_root
from .normalize import as_planes, is_colour
from .predict import (
    NO_DIAMETER_FOUND,
    PredictProgress,
    checked_z_scale,
    estimate_diameter,
    predict_iter,
    predict_planes_iter,
    settled_for,
)
from .prediction_settings import PredictionSettings
from .progress import run_to_end
from .registry import as_model
from .scale import scale_factor
from .tiffstream import PageTiffWriter, TiffMetadata, TiffPageReader, TiffPlanes, partial_path, written_settings
from .unitplan import plan_units
from .units import in_unit

__all__ = [
    "FileProgress", "FileResult", "BatchResult", "Unit", "PlaneResult", "PlaneExecutor", "LocalExecutor",
    "output_paths", "predict_plane", "predict_files_iter", "predict_files", "predict_array_iter", "predict_array",
]

logger = logging.getLogger(__name__)

class Unit(NamedTuple):
    """One unit of prediction: the pixels of one output plane, and how to read them.

    Attributes:
        pixels: The plane, with its channel axis if it has one.
        channel_axis: The channel axis of ``pixels``, or None.
        scale: The object size of the input it comes from: the ``diameter`` and
            ``pixel_size`` keywords of :func:`~napari_unet.core.predict.predict_iter`
            that are set (empty for none).
    """

    pixels: np.ndarray
    channel_axis: int | None
    scale: dict


@dataclass(frozen=True)
class FileProgress:
    """Where a batch is: file ``file`` (0-based) of ``files``, and the plane progress in it.

    Attributes:
        file: Index of the file being segmented.
        files: Inputs in the batch.
        path: The file being segmented.
        plane: Progress within the file (``plane.planes`` output planes).
        planes_done: Planes written so far in this batch, all files together. It goes
            back when a file is done again: after a plane had more objects than uint16
            labels number, or, on a cluster, when a file before it failed while it was
            already being predicted.
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
        return max(0.0, min(1.0, (self.planes_done + within) / self.planes_total)) if self.planes_total else 0.0


@dataclass(frozen=True)
class FileResult:
    """What happened to one input.

    Attributes:
        path: The input.
        output: The label file (None if the input failed).
        planes: Planes segmented.
        objects: Objects found, summed over the planes (each plane numbers its own).
        seconds: Time spent on this input: from the end of the input before it (or the
            batch's start) to its own end, as the work on neighbouring files overlaps;
            the seconds of a batch's inputs add up to its time.
        error: Why the input failed, in plain words.
        skipped: The output existed already and was kept.
        diameter: The object diameter its planes were rescaled for, in pixels (given,
            or estimated with ``diameter="auto"``); None if none was.
        scale: How much its planes were enlarged for the network (below 1: shrunk), from
            the diameter or pixel size; 1.0 if they were not rescaled.
    """

    path: Path
    output: Path | None
    planes: int = 0
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False
    diameter: float | None = None
    scale: float = 1.0


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


#: The attribute of an executor's error that holds the ``(message, category)`` of the
#: warnings the failed plane gave before it failed, where the user would not see them (on
#: a Dask worker), as :attr:`PlaneResult.warnings` holds those of a plane predicted.
PLANE_WARNINGS = "plane_warnings"


@dataclass(frozen=True)
class PlaneResult:
    """The prediction of unit ``index``: its labels, and its probability when asked for.

    ``warnings`` holds the ``(message, category)`` of the warnings its prediction gave
    where the user would not see them (on a Dask worker), to be given with its input's name.
    """

    index: int
    labels: np.ndarray
    probability: np.ndarray | None
    warnings: tuple[tuple[str, type[Warning]], ...] = ()


class PlaneExecutor(Protocol):
    """Predicts a stream of units in order (see :class:`LocalExecutor`).

    The stream runs across the files of a batch, so that the next file's planes are
    read and predicted while the last planes of one are finished.
    """

    def predict_units(
        self, model: Model, units: Iterable[Unit], settings: PredictionSettings, probability: bool
    ) -> Iterator[tuple[int, int, int] | PlaneResult]:
        """Yield ``(index, done, total)`` progress within a unit and a :class:`PlaneResult` per unit, in order.

        ``settings`` are those of all units (settled for ``model``,
        :func:`~napari_unet.core.predict.settled_for`); each unit carries its object
        size. When a unit fails, its error is raised only once the results of the units
        before it are given: an error belongs to the first unit without one.
        """


def predict_plane(model: Model, unit: Unit, settings: PredictionSettings,
                  probability: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probability) of one unit: what a Dask worker runs for each plane.

    Args:
        model: The model.
        unit: The plane, how to read it and its input's object size.
        settings: How to predict it.
        probability: Also return the foreground probability.
    """
    prediction = run_to_end(predict_iter(model, unit.pixels, settings, channel_axis=unit.channel_axis, **unit.scale))
    return prediction.labels, prediction.probability if probability else None


class LocalExecutor:
    """Predicts the units one after the other in this process, reporting every batch of tiles.

    A unit's labels are made while the next unit goes through the network
    (:func:`~napari_unet.core.predict.predict_planes_iter`).
    """

    def predict_units(self, model: Model, units: Iterable[Unit], settings: PredictionSettings,
                      probability: bool) -> Iterator[tuple[int, int, int] | PlaneResult]:
        # The same computation as predict_plane, over the whole stream of units.
        planes = ((_only_plane(model, unit.pixels, unit.channel_axis), scale_factor(model, **unit.scale))
                  for unit in units)
        with closing(predict_planes_iter(model, planes, settings=settings)) as planes_done:
            for index, done, total, finished in planes_done:
                if finished is None:
                    yield index, done, total
                else:
                    labels, plane_probability = finished
                    yield PlaneResult(index, labels, plane_probability if probability else None)


def _only_plane(model: Model, pixels: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """The ``(channels, H, W)`` plane of a unit."""
    planes, _ = as_planes(pixels, model.config.in_channels, channel_axis, model.normalization.colour)
    if len(planes) != 1:
        raise ValueError(f"a unit must be one plane, not {len(planes)}")
    return planes[0]


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
    """A plane of ``job`` has more objects than the labels' integer type can number."""

    def __init__(self, job: _Job, message: str):
        super().__init__(message)
        self.job = job


class _UnitFailed(Exception):
    """The executor failed on a unit of ``job``, or its output could not be written; ``error`` says why."""

    def __init__(self, job: _Job, error: NapariUnetError):
        super().__init__(str(error))
        self.job = job
        self.error = error


class _Stopped(Exception):
    """The caller's stop event was set; the current output is discarded."""


def _input_scale(model: Model, settings: PredictionSettings, requested: dict,
                 first_unit: tuple[np.ndarray, int | None] | None, info: ImageInfo | None, name: str) -> dict:
    """The object size of one input, the same for all its planes and on every executor.

    ``diameter="auto"`` is estimated once, from the input's first plane (as
    :func:`~napari_unet.core.predict.predict_iter` does for a stack). Without a diameter
    or a pixel size, the input's pixel size is used when the model records its own, in
    the same unit.

    Args:
        model: The model.
        settings: The batch's settings, settled for ``model``.
        requested: The ``diameter`` and ``pixel_size`` given for all inputs (None: not given).
        first_unit: The input's first unit, read when its diameter is to be estimated.
        info: What its header says, if it is a file.
        name: Its name in messages.

    Returns:
        The ``diameter`` and ``pixel_size`` keywords that are set (a :class:`Unit`'s ``scale``).
    """
    scale = dict(requested)
    if scale.get("diameter") == "auto" and first_unit is not None:
        pixels, channel_axis = first_unit[:2]
        estimate = estimate_diameter(model, pixels, settings, channel_axis=channel_axis)
        if estimate is None:  # a batch names the file (_naming_inputs_in_warnings)
            warnings.warn(NO_DIAMETER_FOUND, ImageWarning, stacklevel=2)
        else:
            logger.info("%s: estimated object diameter %.1f px", name, estimate)
        scale["diameter"] = estimate
    if (scale.get("diameter") is None and scale.get("pixel_size") is None and model.pixel_size
            and info is not None and info.pixel_size is not None):
        pixel_size = in_unit(info.pixel_size, info.unit, model.pixel_unit)
        if pixel_size is None:
            logger.warning("%s: pixel size in %s, the model's in %s; not rescaled", name, info.unit, model.pixel_unit)
        else:
            scale["pixel_size"] = pixel_size
    return {key: value for key, value in scale.items() if value is not None}


def _handed_out(job: _Job, count: int, read: Callable[[int], tuple[np.ndarray, int | None]], model: Model,
                settings: PredictionSettings, requested: dict, info: ImageInfo | None, name: str,
                owners: _Owners) -> Iterator[Unit]:
    """The ``count`` units of one input, read one by one and noted in ``owners`` as each is handed out.

    The input's object size (:func:`_input_scale`) goes with every unit and into ``job``;
    a diameter to estimate is estimated from the first unit, which is not read again.
    """
    first = read(0) if requested["diameter"] == "auto" else None
    scale = _input_scale(model, settings, requested, first, info, name)
    job.diameter, job.scale, job.units = scale.get("diameter"), scale_factor(model, **scale), count
    for number in range(count):
        pixels, channel_axis = first if first is not None else read(number)
        first = None
        owners.append((job, number))
        yield Unit(pixels, channel_axis, scale)


def _check_scale(model: Model, requested: dict) -> None:
    """Refuse a diameter or pixel size that the model cannot use, before any work starts.

    Raises:
        InputError: As :func:`~napari_unet.core.scale.scale_factor` does, or for an
            estimate the model cannot make.
    """
    diameter, pixel_size = requested["diameter"], requested["pixel_size"]
    if diameter == "auto":
        if not model.object_diameter:
            raise InputError("this model does not record the object size it was trained on; "
                             "it cannot estimate diameters")
    elif diameter is not None or pixel_size is not None:
        if isinstance(diameter, str):
            raise InputError(f"the diameter must be a number of pixels or 'auto', not {diameter!r}")
        scale_factor(model, diameter, pixel_size)


def _count_units(path: Path, in_channels: int, channel: int | None) -> int:
    """Output planes of an input, from its header; 0 if it cannot be read (it fails later, with a message)."""
    try:
        with TiffPageReader(path) as reader:
            return plan_units(str(path), reader.axes, reader.leading_shape, reader.page_axes, reader.page_shape,
                               in_channels, channel=channel).units
    except NapariUnetError:
        return 0


def _is_colour_file(path: Path) -> bool:
    """Whether a TIFF's pages are colour (RGB or RGBA samples), from its header; False if it cannot be read."""
    try:
        with TiffPageReader(path) as reader:
            return reader.page_axes.endswith("S") and reader.page_shape[-1] in (3, 4)
    except NapariUnetError:
        return False


def predict_files_iter(
    model: Model,
    files: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    probability: bool = False,
    overwrite: bool = False,
    executor: PlaneExecutor | None = None,
    stop: threading.Event | None = None,
    channel: int | None = None,
    volume: bool = False,
    z_scale: float | None = None,
    settings: PredictionSettings | None = None,
    diameter: float | str | None = None,
    pixel_size: tuple[float, float] | None = None,
    **options,
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
        channel: For a one-channel model, segment only this channel (0 the first) of
            inputs with several (an ImageJ or OME C axis, or colour samples); inputs
            without channels are segmented as they are. None: each channel of such an
            input is segmented (colour samples are averaged to gray).
        volume: Label z-stacks in 3D (see :func:`_predict_volumes`): each file is read
            whole and predicted in this process.
        z_scale: With ``volume``, the z step in pixels for every file; None: each
            file's own, from its metadata.
        settings: How to predict and post-process every file (None: the defaults); see
            :class:`~napari_unet.core.prediction_settings.PredictionSettings`.
        diameter: Typical object diameter in pixels in every file, or "auto" to estimate
            it once per file, from its first plane.
        pixel_size: Pixel size ``(y, x)`` of every file in the model's unit. Without a
            diameter or pixel size, each file's own pixel size is used when the model
            records one. Channel axes come from each file's axes.
        **options: Settings to change, by their names in :class:`PredictionSettings`.

    Raises:
        InputError: If outputs would overwrite inputs or each other, or a setting is
            wrong (checked before any work).
        TypeError: For an option that is no setting.
    """
    settings = PredictionSettings.of(settings, **options)
    requested = {"diameter": diameter, "pixel_size": pixel_size}
    model = as_model(model)
    if isinstance(files, str | os.PathLike):
        files = [files]
    files = _input_files_once(files, out_dir)
    if volume:
        if executor is not None and not isinstance(executor, LocalExecutor):
            raise InputError("3D labels are made in this process, a volume at a time; a cluster segments planes: "
                             "leave out the cluster, or 3D")
        if channel is not None:
            raise InputError("3D labels are made from one-channel z-stacks; choosing a channel is not supported "
                             "with 3D: save the channel as a stack of its own")
        return (yield from _predict_volumes(model, files, out_dir, probability, overwrite, stop, z_scale,
                                            settings, requested))
    return (yield from _predict_planes(model, files, out_dir, probability, overwrite, executor or LocalExecutor(),
                                       stop, channel, settings, requested))


def _predict_planes(model: Model, files: list[Path], out_dir: str | os.PathLike, probability: bool, overwrite: bool,
                    executor: PlaneExecutor, stop: threading.Event | None, channel: int | None,
                    settings: PredictionSettings, requested: dict) -> Iterator[FileProgress]:
    """:func:`predict_files_iter` plane by plane: every file's planes stream through ``executor`` in one go.

    A file that cannot be read or predicted fails alone: the stream starts again after
    it. A plane with more objects than uint16 numbers makes its file start again in uint32.
    """
    if channel is None:
        model = model.for_colours(_is_colour_file(path) for path in files)
    targets = output_paths(files, out_dir, probability)
    settings = settled_for(model, settings)
    _check_scale(model, requested)
    if channel is not None and (channel < 0 or model.config.in_channels != 1):
        raise InputError(f"channel {channel}: a channel is chosen by its number from 0, for a model that takes one "
                         f"(this one takes {model.config.in_channels})")
    writable_folder(out_dir)  # a folder that cannot be made fails now, not at the first file
    finished = _finished_outputs(targets, overwrite)
    recorded = _batch_settings(model, settings, requested, channel)
    _say_if_made_otherwise([labels for (labels, _), kept in zip(targets, finished) if kept], recorded, out_dir)
    note = _settings_note(recorded)
    tally = _Tally()
    skipped, jobs = [], []
    for index, (path, (labels_path, probability_path)) in enumerate(zip(files, targets)):
        if finished[index]:
            skipped.append((index, FileResult(path, labels_path, skipped=True)))
        else:
            jobs.append(_FileJob(index, path, labels_path, probability_path,
                                 _count_units(path, model.config.in_channels, channel), tally, channel, note))
    tally.total = sum(job.count for job in jobs)

    def progress(job: _FileJob, plane: PredictProgress) -> FileProgress:
        return FileProgress(job.index, len(files), job.path, plane, tally.done, tally.total)

    cancelled = False
    first = 0  # the first job of the next stream
    while first < len(jobs) and not cancelled:
        owners = _Owners()
        units = _file_units(model, jobs[first:], settings, requested, owners)
        try:
            if stop is not None and stop.is_set():
                raise _Stopped
            yield from _predict_jobs(model, units, owners, executor, settings, probability, progress, stop)
            first = len(jobs)
        except _LabelsOverflow as overflow:
            # Rare enough (over 65535 objects in one plane) to redo the file rather than
            # choose uint32, which ImageJ cannot open, for every file.
            overflow.job.label_dtype = np.uint32
            first = jobs.index(overflow.job)
        except _UnitFailed as failed:
            logger.info("failed: %s", failed.error)
            failed.job.fail(failed.error)
            first = jobs.index(failed.job) + 1
        except _Stopped:
            cancelled = True
        finally:
            units.close()
            # Files the stream had started but not finished: written again by the next stream, if any.
            for job in jobs:
                job.abort()
    results = skipped + [(job.index, job.result) for job in jobs if job.result is not None]
    return BatchResult([result for _, result in sorted(results, key=lambda item: item[0])], cancelled)


def _finished_outputs(targets: list[tuple[Path, Path | None]], overwrite: bool) -> list[bool]:
    """Whether each input's outputs (:func:`output_paths`) exist, and are kept rather than made again."""
    return [labels.exists() and (probability is None or probability.exists()) and not overwrite
            for labels, probability in targets]


def _predict_volumes(model: Model, files: list[Path], out_dir: str | os.PathLike, probability: bool, overwrite: bool,
                     stop: threading.Event | None, z_scale: float | None, settings: PredictionSettings,
                     requested: dict) -> Iterator[FileProgress]:
    """:func:`predict_files_iter` for z-stacks labelled in 3D, one file after the other.

    Each file is read a plane at a time where it holds one-channel planes
    (:class:`~napari_unet.core.tiffstream.TiffPlanes`; other files whole) and predicted
    by :func:`~napari_unet.core.predict.predict_iter` as a volume (a T axis gives one
    volume per time point), its outputs written as they come (:func:`_volume_of_file`)
    with its metadata, and renamed into place once complete. A file whose axes say it is
    a time-lapse without Z (TYX) is segmented plane by plane, as objects are never
    followed through time. A file that fails is reported, and the others go on.
    """
    model = model.for_colours(_is_colour_file(path) for path in files)
    targets = output_paths(files, out_dir, probability)
    settings = settled_for(model, settings)
    _check_scale(model, requested)
    if z_scale is not None:
        checked_z_scale(z_scale)
    writable_folder(out_dir)
    finished = _finished_outputs(targets, overwrite)
    recorded = _batch_settings(model, settings, requested, None) | {"volume": True, "z_scale": z_scale}
    _say_if_made_otherwise([labels for (labels, _), kept in zip(targets, finished) if kept], recorded, out_dir)
    note = _settings_note(recorded)
    pending = [index for index, done in enumerate(finished) if not done]
    results = {index: FileResult(files[index], targets[index][0], skipped=True)
               for index in range(len(files)) if index not in pending}
    counts = {index: _count_units(files[index], model.config.in_channels, None) for index in pending}
    total, done = sum(counts.values()), 0

    def ended(cancelled: bool = False) -> BatchResult:
        return BatchResult([results[index] for index in sorted(results)], cancelled)

    for index in pending:
        if stop is not None and stop.is_set():
            return ended(cancelled=True)
        path = files[index]
        started = time.monotonic()

        def progress(plane: PredictProgress, index=index, path=path, before=done) -> FileProgress:
            return FileProgress(index, len(files), path, plane, before + plane.plane + (plane.done == plane.total),
                                total)

        try:
            for label_dtype in (np.uint16, np.uint32):
                try:
                    made = yield from _volume_of_file(model, path, targets[index], z_scale, settings, requested,
                                                      note, label_dtype, stop, progress)
                    break
                except _VolumeOverflow:  # rare enough to do the file again rather than write uint32 always
                    continue
            if made is None:
                return ended(cancelled=True)
            objects, prediction = made
            results[index] = FileResult(path, targets[index][0], counts[index], objects, time.monotonic() - started,
                                        diameter=prediction.diameter if prediction.scale != 1.0 else None,
                                        scale=prediction.scale)
        except NapariUnetError as error:
            results[index] = FileResult(path, None, error=str(error), seconds=time.monotonic() - started)
        done += counts[index]
    return ended()


class _VolumeOverflow(Exception):
    """A volume has more objects than its labels' integer type numbers."""


def _volume_of_file(model: Model, path: Path, targets: tuple[Path, Path | None], z_scale: float | None,
                    settings: PredictionSettings, requested: dict, note: str, label_dtype,
                    stop: threading.Event | None, progress: Callable[[PredictProgress], FileProgress]):
    """Predict one file's z-stack as volumes and write its outputs; yields progress, returns the objects found.

    Each plane's probability is written once the plane is predicted and the 3D labels of
    a chunk of planes (or a volume) once it is labelled
    (:class:`~napari_unet.core.volume.VolumeLabeller`): no stack of results is held, and
    a stack of one-channel planes is read a plane at a time (:class:`~napari_unet.core.tiffstream.TiffPlanes`),
    so a z-stack larger than memory is labelled in 3D. The outputs keep the input's axes
    and metadata.

    Args:
        targets: The labels file and the probability file (None: none) to write.
        note: How they are made (:func:`_settings_note`).
        label_dtype: The labels' integer type.

    Returns:
        The objects found (the volumes' own, added up) and the prediction's summary (its
        diameter and scale), or None if ``stop`` was set; the outputs are then not written.

    Raises:
        InputError: If the file cannot be read, or is no one-channel z-stack.
        _VolumeOverflow: If a volume has more objects than ``label_dtype`` numbers.
    """
    with TiffPageReader(path) as reader:
        if TiffPlanes.reads(reader):
            image, info = TiffPlanes(reader), reader.info  # read a plane at a time: it need not fit in memory
        else:
            with warnings_named(path.name):
                image, info = read_tiff(path)
        made = yield from _volume_of_image(model, path, image, info, reader, targets, z_scale, settings, requested,
                                           note, label_dtype, stop, progress)
    return made


def _volume_of_image(model: Model, path: Path, image, info, reader: TiffPageReader,
                     targets: tuple[Path, Path | None], z_scale: float | None, settings: PredictionSettings,
                     requested: dict, note: str, label_dtype, stop: threading.Event | None,
                     progress: Callable[[PredictProgress], FileProgress]):
    """:func:`_volume_of_file` on the file's image, read (an array) or read as it goes (:class:`TiffPlanes`);
    ``reader`` gives the file's shape and metadata."""
    axes = info.axes
    if "C" in axes or ("S" in axes and not is_colour(image, 1)):
        raise InputError(f"{path}: 3D labels are made from one-channel z-stacks; this file has channels (axes "
                         f"{axes}): save the channel to segment as a stack of its own")
    as_volume = not ("T" in axes and "Z" not in axes)
    if as_volume and "Z" in axes and axes.index("Z") != len(axes) - 3:
        raise InputError(f"{path}: its axes {axes} do not end with ZYX; 3D labels need the z axis just before "
                         "height and width")
    if not as_volume:
        warnings.warn(f"{path.name} is a time-lapse (axes {axes}): its planes are segmented one by one",
                      ImageWarning, stacklevel=2)
    with warnings_named(path.name):
        scale = _input_scale(model, settings, requested, None, info, str(path))
    shape, metadata = reader.shape, reader.metadata
    depth = shape[-3] if as_volume and len(shape) > 2 else 1  # planes of a volume
    most = np.iinfo(label_dtype).max
    objects: dict[int, int] = {}  # by volume: its largest label, as volumes number their objects 1..N
    run = predict_iter(model, image, settings, volume=as_volume,
                       z_scale=z_scale if z_scale is not None else info.z_scale, collect=False, **scale)
    labels_path, probability_path = targets
    with closing(run), ExitStack() as outputs:
        # Left without a commit (stopped, failed), the writers delete what they wrote.
        labels_out = outputs.enter_context(PageTiffWriter(labels_path, shape, axes, label_dtype, metadata, note))
        probability_out = (None if probability_path is None else outputs.enter_context(
            PageTiffWriter(probability_path, shape, axes, np.float32, metadata, note)))
        while True:
            if stop is not None and stop.is_set():
                return None
            try:
                with warnings_named(path.name):  # said of this file, not between the yields
                    plane = next(run)
            except StopIteration as end:
                prediction = end.value
                break
            if plane.labels is not None and probability_out is not None:  # the plane is predicted
                probability_out.write(plane.probability)
            if as_volume:
                labelled = plane.volume_labels
            else:
                labelled = None if plane.labels is None else (plane.plane, plane.labels[np.newaxis])
            if labelled is not None:
                first, part = labelled
                largest = int(part.max(initial=0))
                if largest > most:
                    raise _VolumeOverflow
                objects[first // depth] = max(objects.get(first // depth, 0), largest)
                for page in part:
                    labels_out.write(page)
                # Written: let the chunk's labels go now, not when the next chunk comes (the
                # plan has room for one chunk's labelling, not for the last one's labels too).
                labelled = part = page = None
            yield progress(plane)
        labels_out.commit()
        if probability_out is not None:
            probability_out.commit()
    return sum(objects.values()), prediction


def _batch_settings(model: Model, settings: PredictionSettings, requested: dict, channel: int | None) -> dict:
    """What decides a batch's labels: the model's weights, the settings that decide labels
    (:meth:`~napari_unet.core.prediction_settings.PredictionSettings.recorded`), the object
    size and the channel. Not the tiling nor the device: a batch resumed on another
    machine is not warned about."""
    weights = hashlib.sha256()
    for name, tensor in model.network.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    recorded = {
        "model": model.name or model.description,
        "weights_sha256": weights.hexdigest()[:16],
        **settings.recorded(),
        "diameter": requested["diameter"],
        "pixel_size": requested["pixel_size"],
        "channel": channel,
    }
    return json.loads(json.dumps(recorded))  # as a file gives them back (tuples become lists)


def _settings_note(recorded: dict) -> str:
    """The note written into each output: the version that made it and its :func:`_batch_settings`."""
    return json.dumps({"napari_unet": __version__, "settings": recorded})


def _say_if_made_otherwise(kept: list[Path], settings: dict, out_dir: str | os.PathLike) -> None:
    """Warn when label files a batch keeps (a rerun skips them) were made with other settings."""
    others = []
    for path in kept:
        try:
            earlier = json.loads(written_settings(path) or "null")
        except ValueError:
            continue
        if not (isinstance(earlier, dict) and isinstance(earlier.get("settings"), dict)):
            continue
        # A setting files of an earlier version do not record was its default then (None).
        changed = {key: value for key, value in settings.items() if earlier["settings"].get(key) != value}
        if changed:
            others.append((earlier["settings"], changed))
    if others:
        earlier, changed = others[0]
        changes = "; ".join(f"{key.replace('_', ' ')} {_said(earlier.get(key))} then, {_said(value)} now"
                            for key, value in changed.items())
        warnings.warn(f"{len(others)} label file(s) kept in {out_dir} were made with other settings ({changes}); "
                      "overwriting them (--overwrite, the Batch widget's 'overwrite existing outputs', "
                      "overwrite=True) makes them again with these", InputWarning, stacklevel=3)


def _said(setting) -> str:
    """A recorded setting as a message shows it: "none" for unset, a range as "100 to 2600"."""
    if setting is None:
        return "none"
    if isinstance(setting, list):
        return " to ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in setting)
    return f"{setting:g}" if isinstance(setting, float) else str(setting)


def _input_files_once(specs: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """The TIFF files of folders, glob patterns and files, as the command line takes them, each once.

    A folder or pattern whose tree holds the output folder below its own top (``data/**/*.tif``
    with outputs in ``data/labels``) does not take the files in the output folder: they are
    the outputs of an earlier run. An output folder that is the inputs' own folder stays an
    error later, as any output that would overwrite an input.
    """
    out = Path(out_dir).expanduser().resolve()
    unique: dict[Path, Path] = {}
    left_out = 0
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir() or (not path.exists() and glob.has_magic(str(spec))):
            found = collect_tiffs(spec)
            root = search_root(spec).resolve()
            if out != root and out.is_relative_to(root):
                kept = [file for file in found if not file.resolve().is_relative_to(out)]
                left_out += len(found) - len(kept)
                found = kept
        else:
            found = [path]  # a missing file is reported with the others' results
        for file in found:
            unique.setdefault(file.resolve(), file)
    if left_out:
        warnings.warn(f"{left_out} file(s) in the output folder {out_dir} are not taken as inputs",
                      InputWarning, stacklevel=3)
    return list(unique.values())


def predict_files(model: Model, files: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  on_progress=None, **kwargs) -> BatchResult:
    """Synchronous :func:`predict_files_iter`; ``on_progress`` is called with each :class:`FileProgress`."""
    return run_to_end(predict_files_iter(model, files, out_dir, **kwargs), on_progress)


@dataclass
class _Tally:
    """Planes of a batch written so far and planes in all, for its progress; when the last input ended."""

    done: int = 0
    total: int = 0
    last_end: float = field(default_factory=time.monotonic)


class _Job:
    """Where the units of one input go as their results come back.

    Args:
        writers: The labels' writer, then the probability's if it is asked for.
    """

    def __init__(self, writers: Sequence = ()):
        self.writers = list(writers)
        self.units = 0  # planned; set before the first unit is handed out
        self.written = 0
        self.objects = 0
        self.error: str | None = None
        self.diameter: float | None = None  # the input's object size (see _handed_out)
        self.scale = 1.0

    def write(self, result: PlaneResult) -> None:
        """Write the next unit's labels (and probability).

        Raises:
            _LabelsOverflow: If the labels' type cannot number the plane's objects.
        """
        top = int(result.labels.max(initial=0))
        dtype = self.writers[0].dtype
        if np.issubdtype(dtype, np.integer) and top > np.iinfo(dtype).max:
            raise _LabelsOverflow(self, f"a plane has {top} objects, more than {dtype} labels can number")
        self.writers[0].write(result.labels)
        if len(self.writers) > 1:
            self.writers[1].write(result.probability)
        self.objects += top
        self.written += 1

    def complete(self) -> None:
        """Called once every unit is written."""


class _FileJob(_Job):
    """An input file of a batch: its outputs, written under temporary names until complete.

    Args:
        index: Its place among the batch's inputs.
        path: The input.
        labels_path, probability_path: Its outputs (see :func:`output_paths`).
        count: Its units, counted from its header before the batch started.
        tally: The batch's progress, which its planes count in.
        channel: The one channel to segment, if chosen (see :func:`predict_files_iter`).
        note: How the outputs are made, written into them (:func:`_batch_settings`).
    """

    def __init__(self, index: int, path: Path, labels_path: Path, probability_path: Path | None, count: int,
                 tally: _Tally, channel: int | None = None, note: str | None = None):
        super().__init__()
        self.channel = channel
        self.note = note
        self.index = index
        self.path = path
        self.labels_path = labels_path
        self.probability_path = probability_path
        self.count = count
        self.tally = tally
        self.label_dtype = np.uint16
        self.result: FileResult | None = None
        self._outputs = ExitStack()
        self._layout: tuple = ()  # shape, axes and metadata of the outputs, known once the file is read
        self._started = 0.0

    def read_units(self, model: Model, settings: PredictionSettings, requested: dict,
                   owners: _Owners) -> Iterator[Unit]:
        """Plan the file's units, then read them one by one, noting each in ``owners`` as it is handed out.

        The outputs are opened by the first :meth:`write`.

        Raises:
            NapariUnetError: If the file cannot be read or given to the model.
        """
        self._started = time.monotonic()
        with TiffPageReader(self.path) as reader:
            plan = plan_units(str(self.path), reader.axes, reader.leading_shape, reader.page_axes,
                               reader.page_shape, model.config.in_channels, channel=self.channel)

            def unit(number: int) -> tuple[np.ndarray, int | None]:
                return plan.pixels([reader.read_page(page) for page in plan.page_indices(number)])

            if plan.units == 0:
                raise InputError(f"{self.path}: no planes to segment")
            out_shape = plan.out_leading_shape + tuple(
                reader.page_shape[i] for i, axis in enumerate(reader.page_axes) if axis in "YX")
            self._layout = (out_shape, plan.out_axes, reader.metadata)
            yield from _handed_out(self, plan.units, unit, model, settings, requested, reader.info, str(self.path),
                                   owners)

    def write(self, result: PlaneResult) -> None:
        if not self.writers:
            # Opened with the first result, not when the file is read: an executor may read
            # many files ahead (a Dask cluster's window), and only those being written hold files.
            out_shape, axes, metadata = self._layout
            targets = [(self.labels_path, self.label_dtype)]
            if self.probability_path is not None:
                targets.append((self.probability_path, np.float32))
            self.writers = [self._outputs.enter_context(PageTiffWriter(path, out_shape, axes, dtype, metadata,
                                                                       self.note))
                            for path, dtype in targets]
        super().write(result)
        self.tally.done += 1

    def complete(self) -> None:
        for writer in self.writers:
            writer.commit()
        self._outputs.close()
        end = time.monotonic()
        self.result = FileResult(self.path, self.labels_path, self.written, self.objects, end - self.tally.last_end,
                                 diameter=self.diameter, scale=self.scale)
        self.tally.last_end = end

    def fail(self, error: NapariUnetError) -> None:
        """Give up this file: its outputs are discarded and its planes leave the batch's total."""
        if self.result is not None:  # failed already, or finished
            return
        self.abort()
        self.error = str(error)
        self.tally.total -= self.count
        self.result = FileResult(self.path, None, error=self.error, seconds=time.monotonic() - self._started)

    def abort(self) -> None:
        """Discard the outputs of a file not finished (nor failed), so that it can be done again."""
        if self.result is None:
            self._outputs.close()  # the writers delete their partial files
            self._outputs = ExitStack()
            self.tally.done -= self.written
            self.writers, self.units, self.written, self.objects = [], 0, 0, 0


class _Owners(deque):
    """The units handed out whose results have not come back, oldest first, as ``(job, unit number)``.

    ``reading`` is the job whose input is being read, from before its first unit is
    handed out (its diameter estimated, its first plane read) to when the next one's is.
    """

    reading: _Job | None = None


def _file_units(model: Model, jobs: Sequence[_FileJob], settings: PredictionSettings, requested: dict,
                owners: _Owners) -> Iterator[Unit]:
    """The units of the jobs' files, in order; a file that cannot be read fails and the next one goes on."""
    for job in jobs:
        if job.result is not None:  # failed while an earlier stream read it
            continue
        owners.reading = job
        try:
            yield from job.read_units(model, settings, requested, owners)
        except NapariUnetError as error:
            logger.info("failed: %s", error)
            job.fail(error)


def _naming_inputs_in_warnings(events: Iterator, owners: _Owners) -> Iterator:
    """The executor's events, with the user's warnings given again with the input they concern.

    Warnings about one image (:class:`~napari_unet.core.errors.ImageWarning`: a colour
    image turned gray, NaN pixels, no objects to estimate a diameter from) are given
    again with the input's name, once per input and message: in a folder, "the image has
    3 colour channels" does not say which file has.
    A warning raised while a unit is read or prepared concerns the input being read when
    it is raised (one event can take several units, of several inputs); one that a
    result or an error brings back (from a Dask worker) concerns its unit, the oldest not
    yet given. Other warnings (a library's) pass unchanged.
    """
    said: set[str] = set()

    def give(message, category, job) -> None:
        path = getattr(job, "path", None)
        if issubclass(category, ImageWarning) and path is not None:
            text = f"{path.name}: {message}"
            if text not in said:
                said.add(text)
                warnings.warn(text, category, stacklevel=3)
        else:
            warnings.warn(message, category, stacklevel=3)

    while True:
        event = failure = None
        caught = []  # (message, category, filename, line, the job being read when it was raised)

        def note(message, category, filename, lineno, *_, caught=caught):
            caught.append((message, category, filename, lineno, owners.reading))

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = note
            try:
                event = next(events)
            except StopIteration:
                event = failure = StopIteration()
            except BaseException as error:  # noqa: BLE001 - raised again once the warnings are given
                failure = error
        for message, category, filename, lineno, job in caught:
            if issubclass(category, ImageWarning) and job is not None:
                give(message, category, job)
            else:
                warnings.warn_explicit(message, category, filename, lineno)
        # Given with the oldest unit not yet given: the one this result, or this failure, is of.
        for message, category in (event.warnings if isinstance(event, PlaneResult)
                                  else getattr(failure, PLANE_WARNINGS, ())):
            give(message, category, owners[0][0] if owners else None)
        if isinstance(failure, StopIteration):
            return
        if failure is not None:
            raise failure
        yield event


def _predict_jobs(model: Model, units: Iterable[Unit], owners: _Owners, executor: PlaneExecutor,
                  settings: PredictionSettings, probability: bool, progress: Callable, stop: threading.Event | None):
    """Stream units through the executor into their jobs, in one go across the jobs.

    Args:
        model: The model.
        units: The units of all jobs, in order; each is noted in ``owners`` as
            ``(job, unit number)`` when it is handed out.
        owners: The units handed out whose results have not come back, oldest first.
        executor: Where the units are predicted.
        settings: The settings of all units, settled for ``model``.
        probability: Also write each unit's probability (the jobs have a second writer).
        progress: Makes what is yielded from a job and a :class:`PredictProgress` in it.
        stop: Ends the stream at the next step when set.

    Raises:
        _UnitFailed: If the executor failed on a unit.
        _LabelsOverflow: If a job's labels type cannot number a plane's objects.
        _Stopped: If ``stop`` was set.
    """
    given = 0  # results given by the executor
    events = executor.predict_units(model, units, settings, probability)
    try:
        for event in _naming_inputs_in_warnings(events, owners):
            if isinstance(event, PlaneResult):
                job, number = owners.popleft()
                given += 1
                if job.error is None:  # else its file failed while being read
                    try:
                        job.write(event)
                        if job.written == job.units:
                            job.complete()
                    except _LabelsOverflow:
                        raise
                    except NapariUnetError as error:  # its output could not be written (a full disk)
                        raise _UnitFailed(job, error) from error
                    yield progress(job, PredictProgress(number, job.units, 1, 1))
            else:
                index, done, total = event
                job, number = owners[index - given]
                if job.error is None:
                    yield progress(job, PredictProgress(number, job.units, done, total))
            if stop is not None and stop.is_set():
                raise _Stopped
    except (_LabelsOverflow, ClusterError):
        raise
    except NapariUnetError as error:
        if not owners:
            raise
        raise _UnitFailed(owners[0][0], error) from error
    finally:
        # Stopped, failed or closed: let the executor drop the units nobody will write.
        events.close()


def predict_array_iter(
    model: Model,
    array,
    out=None,
    channel_axis: int | None = None,
    executor: PlaneExecutor | None = None,
    stop: threading.Event | None = None,
    settings: PredictionSettings | None = None,
    diameter: float | str | None = None,
    pixel_size: tuple[float, float] | None = None,
    **options,
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
        settings: How to predict and post-process (None: the defaults); see
            :class:`~napari_unet.core.prediction_settings.PredictionSettings`.
        diameter: Typical object diameter in pixels, or "auto" to estimate it once,
            from the first plane.
        pixel_size: Pixel size ``(y, x)`` in the model's unit.
        **options: Settings to change, by their names in :class:`PredictionSettings`.

    Returns:
        ``out`` (the array, or the TIFF path), or the new labels array.

    Raises:
        InputError: If ``out`` has the wrong shape, its dtype cannot hold the labels, or
            it is a path that does not name a TIFF file.
    """
    settings = PredictionSettings.of(settings, **options)
    requested = {"diameter": diameter, "pixel_size": pixel_size}
    model = as_model(model)
    if not hasattr(array, "shape"):  # a list, say; a lazy array (Dask, Zarr) is read plane by plane
        array = np.asarray(array)
    shape = tuple(array.shape)
    if len(shape) < 2:
        raise InputError(f"an image needs at least two axes (height, width), got shape {shape}")
    if isinstance(out, str | os.PathLike) and Path(out).suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"a path given as out is written as a TIFF file and must end in .tif or .tiff, not {out}")
    if channel_axis is None and shape[-1] in (3, 4):
        raise InputError(f"the array's last axis has {shape[-1]} values, too few for an image's width; for "
                         f"colour channels last, give np.moveaxis(array, -1, 0) and channel_axis=0")
    axes = "Q" * (len(shape) - 2) + "YX"
    if channel_axis is not None and channel_axis < 0:
        channel_axis += len(shape)
    model = model.for_image(array, channel_axis)
    plan = plan_units("the array", axes, shape[:-2], "YX", shape[-2:], model.config.in_channels, channel_axis)
    settings = settled_for(model, settings)
    _check_scale(model, requested)
    out_shape = plan.out_leading_shape + shape[-2:]
    executor = executor or LocalExecutor()

    def unit(number: int) -> tuple[np.ndarray, int | None]:
        index = list(np.unravel_index(number, plan.out_leading_shape)) if plan.out_leading_shape else []
        if plan.channel_leading_axis is not None:
            index.insert(plan.channel_leading_axis, slice(None))
        return np.asarray(array[tuple(index)]), plan.unit_channel_axis

    def stream(writer) -> Iterator[PredictProgress]:
        job, owners = _Job([writer]), _Owners()
        owners.reading = job
        units = _handed_out(job, plan.units, unit, model, settings, requested, None, "the array", owners)
        try:
            yield from _predict_jobs(model, units, owners, executor, settings, False,
                                     lambda _job, plane: plane, stop)
        except _UnitFailed as failed:
            raise failed.error from None

    try:
        if out is None or not isinstance(out, str | os.PathLike):
            labels = np.zeros(out_shape, np.int32) if out is None else out
            if tuple(labels.shape) != out_shape:
                raise InputError(f"the labels array has shape {tuple(labels.shape)}; it needs {out_shape}")
            if np.dtype(labels.dtype).kind not in "ui":
                raise InputError(f"the labels array holds {np.dtype(labels.dtype)}; labels need whole numbers "
                                 "(an unsigned or signed integer type)")
            yield from stream(_ArrayPlanes(labels, plan.out_leading_shape))
            return labels
        with PageTiffWriter(out, out_shape, plan.out_axes, np.uint32, TiffMetadata()) as writer:
            yield from stream(writer)
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
