"""The Batch widget: segment a folder (or glob) of TIFF files with the core's batch engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, SpinBox

from ._common import ModelChooser, connect_worker, device_choices, guarded, report_error, show_error, show_info

if TYPE_CHECKING:
    import napari


class BatchWidget(Container):
    """Dock widget that runs :func:`~napari_unet.core.batch.predict_files_iter` in a worker.

    Args:
        viewer: The napari viewer.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._worker = None
        self.result = None
        self.inputs = LineEdit(label="inputs", tooltip="A folder of TIFF files, a TIFF file, or a glob like /data/*.tif")
        self.out_dir = FileEdit(label="output folder", mode="d")
        self.model = ModelChooser(viewer, allow_scratch=False)
        self.tile_size = SpinBox(label="tile size", value=512, min=64, max=8192, step=64)
        self.device = ComboBox(label="device", choices=device_choices())
        self.run = PushButton(text="Run batch")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1000)
        self.status = Label(value="")
        # Choices come from a callable: napari resets every combo box when layers change.
        self.results = ComboBox(label="result", choices=self._result_choices,
                                tooltip="A finished output to open as a Labels layer.")
        self.open_result = PushButton(text="Open result")
        self.extend([
            self.inputs, self.out_dir, self.model, self.tile_size, self.device, self.run, self.cancel,
            self.progress, self.status, self.results, self.open_result,
        ])
        self.run.changed.connect(self.start)
        self.cancel.changed.connect(self.stop)
        self.open_result.changed.connect(self.open_selected)

    def start(self, *_):
        """Collect the files, load the model and start the batch in a worker thread."""
        from napari.qt.threading import create_worker

        from ..core.batch import predict_files_iter
        from ..core.errors import NapariUnetError
        from ..core.io import collect_tiffs

        if not self.inputs.value.strip():
            show_error("enter a folder, TIFF file or glob pattern of the inputs")
            return
        try:
            files = collect_tiffs(self.inputs.value.strip())
            model = self.model.load()
        except NapariUnetError as error:
            report_error(error, "the batch")
            return
        self.run.enabled, self.cancel.enabled = False, True
        self.progress.value = 0
        self.status.value = f"{len(files)} file(s)"
        self._worker = create_worker(
            guarded(predict_files_iter), model, files, Path(self.out_dir.value), tile_size=self.tile_size.value,
            device=self.device.value, _start_thread=False, _ignore_errors=True,
        )
        connect_worker(self._worker, self._on_progress, self._on_done, "the batch", self._on_finish)
        self._worker.start()

    def stop(self, *_):
        """Cancel after the current batch of tiles; finished files stay, the current one is not written."""
        if self._worker is not None:
            self._worker.quit()

    def _on_progress(self, update):
        plane = update.plane
        within = (plane.plane * plane.total + plane.done) / max(plane.planes * plane.total, 1)
        self.progress.value = int(1000 * (update.file + within) / max(update.files, 1))
        self.status.value = f"{update.path.name} ({update.file + 1}/{update.files})"

    def _on_done(self, result):
        self.result = result
        done = [item for item in result.files if item.output is not None]
        self.results.reset_choices()
        message = f"{len(done)} of {len(result.files)} file(s) segmented"
        if result.failed:
            failed = "; ".join(f"{item.path.name}: {item.error}" for item in result.failed)
            show_error(f"{message}; failed: {failed}")
        else:
            show_info(message)
        self.status.value = message
        self.progress.value = 1000

    def _result_choices(self, _widget=None) -> list[tuple[str, str]]:
        if self.result is None:
            return []
        return [(item.output.name, str(item.output)) for item in self.result.files if item.output is not None]

    def _on_finish(self):
        self.run.enabled, self.cancel.enabled = True, False
        self._worker = None

    def open_selected(self, *_):
        """Open the chosen output as a Labels layer, with its pixel size as scale."""
        from ..core.errors import NapariUnetError
        from ..core.io import read_tiff

        if not self.results.value:
            show_error("run a batch first, then choose a result")
            return
        try:
            labels, info = read_tiff(self.results.value)
        except NapariUnetError as error:
            report_error(error, "opening the result")
            return
        scale = (1.0,) * (labels.ndim - 2) + (info.pixel_size or (1.0, 1.0))
        return self._viewer.add_labels(labels, name=Path(self.results.value).stem, scale=scale)
