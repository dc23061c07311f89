"""The Batch widget: segment a folder (or glob) of TIFF files with the core's batch engine.

The widget only collects settings and shows progress: the work is
:func:`~napari_unet.core.batch.predict_files_iter`, the engine of ``napari-unet predict``,
run in a worker thread. Cancel sets the engine's stop event: the file being segmented is
not written (no partial file stays), the finished ones stay, and running again goes on
from there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..core.prediction_settings import PredictionSettings
from ._common import (
    ModelChooser,
    ScrollingDock,
    connect_worker,
    device_choice,
    float32_choice,
    guarded,
    prediction_settings,
    report_error,
    show_error,
    show_info,
    threshold_setting,
    views_choice,
    wrapped_label,
)

if TYPE_CHECKING:
    import napari

#: Name of the output folder made beside the inputs when none is chosen.
DEFAULT_OUTPUT = "labels"


def default_output(inputs: str) -> Path | None:
    """``<input folder>/labels`` for a folder, a file or a glob pattern (None when empty)."""
    from ..core.io import search_root

    text = inputs.strip()
    return search_root(text) / DEFAULT_OUTPUT if text else None


def _intensity_range(text: str) -> tuple[float, float] | None:
    """The intensity range typed as "LOW HIGH" (None when empty).

    Raises:
        InputError: If the text is not two numbers, the lower first.
    """
    from ..core.errors import InputError
    from ..core.normalize import IntensityRange

    if not text.strip():
        return None
    try:
        low, high = (float(value) for value in text.replace(",", " ").split())
    except ValueError:
        raise InputError(f"an intensity range is two numbers, LOW HIGH (such as 100 3000), not {text.strip()!r}") from None
    IntensityRange(low, high)
    return low, high


class BatchWidget(ScrollingDock):
    """Dock widget that runs :func:`~napari_unet.core.batch.predict_files_iter` in a worker.

    Args:
        viewer: The napari viewer.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._worker = None
        self._stop = threading.Event()
        self._started = 0.0
        self._default_out: Path | None = None
        self._estimating = False  # whether the running batch estimates each file's diameter
        self.result = None
        self.inputs = LineEdit(label="inputs", tooltip="A folder of TIFF files, a TIFF file, or a glob like /data/*.tif")
        self.out_dir = FileEdit(label="output folder", mode="d", value=None, nullable=True,
                                tooltip="Where the label files go (default: a 'labels' folder beside the inputs). "
                                "Files already there are kept and not segmented again.")
        self.model = ModelChooser(viewer, allow_scratch=False)
        self.tile_size, self.threshold, self.min_size, self.orientations = prediction_settings(self.model)
        self.diameter = FloatSpinBox(
            label="object diameter (px)", value=0.0, min=0.0, max=10_000.0, step=1.0,
            tooltip="Typical object diameter in the files, in pixels: planes are rescaled so that objects match "
            "the model's, and the labels are brought back to the files' grid. 0: each file's pixel size when the "
            "model records one, else no rescaling.")
        self.estimate_diameter = CheckBox(
            label="estimate diameter per file", value=False,
            tooltip="Estimate each file's object diameter from a first prediction of its first plane (a few "
            "predictions of that plane more per file), instead of the diameter above.")
        self.intensity_range = LineEdit(
            label="intensity range", value="",
            tooltip="Two numbers, LOW HIGH: the intensities mapped to the model's range in every plane, instead "
            "of stretching each plane from its own 1st to 99.8th percentile; for stacks and screens whose empty "
            "or out-of-focus planes must stay dark rather than look like objects. Empty: each plane's "
            "percentiles.")
        self.intensity_range.native.setPlaceholderText("LOW HIGH; empty: each plane's percentiles")
        self.channel = SpinBox(
            label="channel (-1: all)", value=-1, min=-1, max=255,
            tooltip="For files with several channels (a C axis, or colours): segment only this one, 0 being the "
            "first (Fiji's C1). -1: each channel, one after the other (colours averaged to gray).")
        self.volume = CheckBox(
            label="3D: z-stacks as volumes", value=False,
            tooltip="Label each z-stack as one volume: each object keeps one label through the planes it spans. "
            "The z step comes from each file's voxel size (isotropic, with a warning, where a file records none); "
            "a T axis gives one volume per time point, and a time-lapse without Z stays plane by plane. Files "
            "are labelled one after the other, each read a plane at a time.")
        self.views = views_choice()
        self.probability = CheckBox(
            label="write probabilities", value=False,
            tooltip="Also write NAME_probability.tif, the foreground probability (float32), beside each label file.")
        self.overwrite = CheckBox(
            label="overwrite existing outputs", value=False,
            tooltip="Segment again the files whose label files exist. Off: they are kept and skipped, so that a "
            "rerun goes on where the last one stopped.")
        self.device = device_choice()
        self.float32 = float32_choice()
        self.compile = CheckBox(label="compile network", value=False,
                                tooltip="Compile the network before the first plane (torch.compile): about 8 % "
                                "faster on a CPU after 10-25 s per image size; worth it for long batches.")
        self.run = PushButton(text="Run batch")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1000)
        self.status = wrapped_label()
        # Choices come from a callable: napari resets every combo box when layers change.
        self.results = ComboBox(label="result", choices=self._result_choices,
                                tooltip="A finished output to open as a Labels layer.")
        self.open_result = PushButton(text="Open result")
        self.contents.extend([
            self.inputs, self.out_dir, self.model, self.tile_size, self.threshold, self.min_size, self.orientations,
            self.diameter, self.estimate_diameter, self.intensity_range, self.channel, self.volume, self.views,
            self.probability,
            self.overwrite, self.device, self.float32, self.compile,
            self.run, self.cancel, self.progress, self.status, self.results, self.open_result,
        ])
        self.inputs.changed.connect(self._update_default_output)
        self.estimate_diameter.changed.connect(lambda estimate: setattr(self.diameter, "enabled", not estimate))
        self.run.changed.connect(self.start)
        self.cancel.changed.connect(self.stop)
        self.open_result.changed.connect(self.open_selected)
        # Closing the dock (or napari) mid-batch stops the worker at its next step.
        self.when_closed(self._stop.set)

    def _update_default_output(self, *_):
        """Follow the inputs with the default output folder, unless the user chose another."""
        if self.out_dir.value is None or Path(self.out_dir.value) == self._default_out:
            self._default_out = default_output(self.inputs.value)
            self.out_dir.value = self._default_out

    def start(self, *_):
        """Collect the files, load the model and start the batch in a worker thread."""
        from napari.qt.threading import create_worker

        from ..core.batch import predict_files_iter
        from ..core.errors import NapariUnetError
        from ..core.io import collect_tiffs

        if not self.inputs.value.strip():
            show_error("enter a folder, TIFF file or glob pattern of the inputs")
            return
        out_dir = self.out_dir.value or default_output(self.inputs.value)
        try:
            settings = PredictionSettings(
                tile_size=self.tile_size.value or None, threshold=threshold_setting(self.threshold, self.model),
                min_size=self.min_size.value, device=self.device.value, amp=not self.float32.value,
                compile_network=self.compile.value, test_time_augmentation=self.orientations.value,
                intensity_range=_intensity_range(self.intensity_range.value), views=self.views.value)
            files = collect_tiffs(self.inputs.value.strip())
            model = self.model.load()
        except NapariUnetError as error:
            report_error(error, "the batch")
            return
        self.out_dir.value = out_dir
        self.run.enabled, self.cancel.enabled = False, True
        self.progress.value = 0
        self.status.value = f"{len(files)} file(s)"
        self._stop.clear()
        self._started = time.monotonic()
        self._estimating = self.estimate_diameter.value
        self._worker = create_worker(
            guarded(predict_files_iter), model, files, Path(out_dir), probability=self.probability.value,
            overwrite=self.overwrite.value,
            channel=None if self.channel.value < 0 else self.channel.value, volume=self.volume.value,
            stop=self._stop, settings=settings,
            diameter="auto" if self._estimating else (self.diameter.value or None),
            _start_thread=False, _ignore_errors=True,
        )
        connect_worker(self._worker, self, self._on_progress, self._on_done, "the batch", self._on_finish,
                       on_error=lambda message: setattr(self.status, "value", message))
        self._worker.start()

    def stop(self, *_):
        """Cancel after the current batch of tiles; finished files stay, the current one is not written."""
        if self._worker is not None:
            self._stop.set()
            self.status.value = "cancelling..."

    def _on_progress(self, update):
        self.progress.value = int(1000 * update.fraction)
        rate = update.planes_done / max(time.monotonic() - self._started, 1e-9)
        plane = update.plane
        self.status.value = (f"{update.path.name} ({update.file + 1}/{update.files}), "
                             f"plane {min(plane.plane + 1, plane.planes)}/{plane.planes}, {rate:.2f} planes/s")

    def _on_done(self, result):
        self.result = result
        segmented = [item for item in result.files if item.output is not None and not item.skipped]
        self.results.reset_choices()
        message = f"{len(segmented)} of {len(result.files)} file(s) segmented"
        if result.skipped:
            message += f", {len(result.skipped)} skipped (their outputs exist)"
        diameters = sorted(item.diameter for item in segmented if item.diameter is not None)
        if diameters and self._estimating:
            low, high = diameters[0], diameters[-1]
            message += f"; estimated diameters {low:.1f} px" if low == high else f"; estimated diameters {low:.1f} to {high:.1f} px"
        if result.cancelled:
            message = f"cancelled: {message}"
        if result.failed:
            failed = "; ".join(f"{item.path.name}: {item.error}" for item in result.failed)
            show_error(f"{message}; failed: {failed}")
        else:
            show_info(message)
        self.status.value = message
        if not result.cancelled:
            self.progress.value = 1000

    def _result_choices(self, _widget=None) -> list[tuple[str, str]]:
        if self.result is None:
            return []
        return [(item.output.name, str(item.output)) for item in self.result.files if item.output is not None]

    def _on_finish(self):
        self.run.enabled, self.cancel.enabled = True, False
        self._worker = None

    def open_selected(self, *_):
        """Open the chosen output as a Labels layer, placed as the plugin's reader places its input."""
        from .._reader import read_tiffs
        from ..core.errors import NapariUnetError

        if not self.results.value:
            show_error("run a batch first, then choose a result")
            return
        try:
            [(labels, options, _)] = read_tiffs(self.results.value)
        except NapariUnetError as error:
            report_error(error, "opening the result")
            return
        # Label images have neither colour nor channels; the scale and units (Z included) stay.
        options.pop("rgb", None)
        options.pop("channel_axis", None)
        return self._viewer.add_labels(labels, **options)
