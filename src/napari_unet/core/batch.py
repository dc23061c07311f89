"""Segmenting many TIFF files with one model, file by file.

:func:`predict_files_iter` is the engine behind ``napari-unet predict`` and the napari
Batch widget: it yields progress, writes each result atomically next to nothing but its
own output, reports unreadable inputs and goes on with the others, and never writes over
an input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Model
from .errors import InputError, NapariUnetError
from .io import read_tiff, write_tiff
from .predict import PredictProgress, predict_iter
from .progress import relay

__all__ = ["FileProgress", "FileResult", "BatchResult", "output_path", "predict_files_iter"]


@dataclass(frozen=True)
class FileProgress:
    """Where a batch is: file ``file`` (0-based) of ``files``, and the plane progress in it."""

    file: int
    files: int
    path: Path
    plane: PredictProgress


@dataclass(frozen=True)
class FileResult:
    """What happened to one input."""

    path: Path
    output: Path | None
    planes: int = 0
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BatchResult:
    """All inputs of a batch, in order."""

    files: list[FileResult] = field(default_factory=list)

    @property
    def failed(self) -> list[FileResult]:
        return [result for result in self.files if result.error is not None]


def output_path(path: Path, out_dir: Path, suffix: str = "") -> Path:
    """The label file written for ``path``: same name, in ``out_dir``, always ``.tif``."""
    return Path(out_dir) / f"{Path(path).stem}{suffix}.tif"


def _label_dtype(labels: np.ndarray):
    return np.uint16 if labels.max(initial=0) < 2**16 else np.uint32


def predict_files_iter(
    model: Model,
    files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    probability: bool = False,
    **predict_options,
) -> Iterator[FileProgress]:
    """Segment TIFF files one after the other; yields progress, returns a :class:`BatchResult`.

    Args:
        model: The model.
        files: Input TIFF files.
        out_dir: Folder for the label files (created if needed).
        probability: Also write ``NAME_probability.tif`` with the foreground probability.
        **predict_options: Passed to :func:`~napari_unet.core.predict.predict_iter`.

    Raises:
        InputError: If an output would overwrite an input (checked before any work).
    """
    files = [Path(f) for f in files]
    out_dir = Path(out_dir)
    inputs = {f.resolve() for f in files}
    for path in files:
        for suffix in ("", "_probability") if probability else ("",):
            if output_path(path, out_dir, suffix).resolve() in inputs:
                raise InputError(
                    f"the output {output_path(path, out_dir, suffix)} would overwrite an input; choose another output folder"
                )
    result = BatchResult()
    for index, path in enumerate(files):
        start = time.monotonic()
        try:
            image, info = read_tiff(path)
            prediction = yield from relay(
                predict_iter(model, image, **predict_options),
                lambda plane, index=index, path=path: FileProgress(index, len(files), path, plane),
            )
        except NapariUnetError as error:
            result.files.append(FileResult(path, None, error=str(error)))
            continue
        target = write_tiff(
            output_path(path, out_dir), prediction.labels.astype(_label_dtype(prediction.labels)),
            info.pixel_size, info.unit or "um",
        )
        if probability:
            write_tiff(output_path(path, out_dir, "_probability"), prediction.probability, info.pixel_size, info.unit or "um")
        planes = prediction.labels.reshape(-1, *prediction.labels.shape[-2:])
        result.files.append(
            FileResult(
                path, target, planes=len(planes), objects=int(sum(p.max(initial=0) for p in planes)),
                seconds=time.monotonic() - start,
            )
        )
    return result
