"""Make the documentation screenshots of the napari-unet widgets in a real napari window.

Run it from the repository root under a virtual screen::

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshots.py

(xvfb-run's own screen, 1280x1024, is smaller than the windows shown.)

It opens napari, loads the plugin's sample data, docks the widgets through the plugin
manifest (as a user does from the Plugins menu), drives them the way a user would (a short
real training run on the CPU, a prediction with the model trained in the session, a batch
over a few generated TIFF files) and writes four PNG files to ``docs/images/``:

- ``train.png``: the Train widget after training, with the live plot and status filled in.
- ``predict.png``: the Predict widget after predicting, with the prediction layer shown.
- ``batch.png``: the Batch widget after segmenting a folder of TIFF files.
- ``screenshot.png``: Train and Predict docked side by side with a prediction (README).

The whole run takes under a minute on an idle 2-core CPU, longer on a busy one (training
then ends at its time budget of 1.5 minutes). Nothing is written outside ``docs/images/``
and two temporary folders, which are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# napari reads its settings file when it is first imported. A throw-away settings file
# makes the screenshots independent of the settings of whoever runs the script (theme,
# font size, window layout) and keeps the script from changing those settings.
_SETTINGS_DIR = tempfile.mkdtemp(prefix="napari-unet-screenshot-settings-")
os.environ["NAPARI_CONFIG"] = str(Path(_SETTINGS_DIR) / "settings.yaml")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
OUT_DIR = REPOSITORY / "docs" / "images"
#: Window size of the single-widget screenshots: high enough for the whole Train widget,
#: about 960 pixels with its plot (a lower window scrolls it).
WINDOW_SIZE = (1400, 1080)
#: Window size of the README screenshot, whose two docks stand side by side.
WIDE_WINDOW_SIZE = (1800, 1080)
#: PNG files above this size are reduced (palette, then downscaling) so the docs stay light.
MAX_BYTES = 400_000
#: Training ends after this many epochs (of 8 steps each on the sample), about 20 s on an
#: idle 2-core CPU: enough validations for the plot to show loss and scores. Epochs rather
#: than time end it, so that the screenshots do not depend on how busy the machine is.
TRAIN_EPOCHS = 12
#: Time budget in minutes, only a safety net on a very slow or busy machine.
TRAIN_MINUTES = 1.5


def process_events_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the Qt event loop until ``condition()`` is true.

    The widgets train and predict in napari worker threads whose results reach the widgets
    as Qt signals, so the script has to keep the event loop turning while it waits, just
    as napari does for a user.

    Args:
        condition: Checked between rounds of event processing.
        timeout: Seconds to wait before giving up.
        what: Named in the error message when the wait times out.

    Raises:
        TimeoutError: If ``condition`` is still false after ``timeout`` seconds.
    """
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    """Let Qt lay out and paint for a moment (docking and resizing are asynchronous)."""
    deadline = time.monotonic() + seconds
    process_events_until(lambda: time.monotonic() > deadline, seconds + 5, "the window to settle")


def close_notifications() -> None:
    """Close napari's pop-up notifications, which would otherwise cover part of the canvas.

    The messages (for example "training finished") are what a user sees for a few
    seconds; in a still image they only hide the segmentation.
    """
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for widget in QApplication.topLevelWidgets() + QApplication.allWidgets():
        if isinstance(widget, NapariQtNotification) and widget.isVisible():
            widget.close()


def save_screenshot(viewer, name: str) -> Path:
    """Save the whole napari window (canvas, layer list and dock widgets) as a small PNG.

    The image is reduced to a 256-colour palette, which keeps the text of the widgets
    sharp (unlike JPEG-like losses) and usually shrinks a napari window several times.
    Only if that is still above :data:`MAX_BYTES` is the image scaled down.

    Args:
        viewer: The napari viewer.
        name: File name in ``docs/images``.

    Returns:
        The path written.
    """
    close_notifications()
    # A spin box that was set last keeps the keyboard focus and shows its text selected;
    # a user looking at the result would have clicked into the canvas.
    from qtpy.QtWidgets import QLineEdit

    viewer.window._qt_viewer.canvas.native.setFocus()
    for line_edit in viewer.window._qt_window.findChildren(QLineEdit):
        line_edit.deselect()
    settle(0.5)
    # flash=False: napari otherwise flashes the window white, which can leak into the grab.
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(pixels)[..., :3])
    path = OUT_DIR / name
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        resized = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
        resized.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
        if path.stat().st_size <= MAX_BYTES or scale < 0.5:
            break
        scale *= 0.9
    print(f"{path.relative_to(REPOSITORY)}: {resized.width}x{resized.height}, {path.stat().st_size / 1000:.0f} KB")
    return path


def show_only(viewer, visible: list) -> None:
    """Show the given layers and hide all others (so each image shows one thing clearly).

    Layers are matched by name: a layer that a dock widget created reaches the script
    through napari's viewer proxy, so it is a different Python object than the one in
    ``viewer.layers``.
    """
    names = {layer.name for layer in visible}
    for layer in viewer.layers:
        layer.visible = layer.name in names


def fit_view(viewer, layer) -> None:
    """Center and zoom the canvas on one layer.

    ``viewer.reset_view()`` fits all layers, hidden ones included, so a small image opened
    next to the larger sample would fill only a corner of the canvas.
    """
    # napari 0.9 moved the camera to ``viewer.scene``; older versions have ``viewer.camera``.
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    low, high = layer.extent.world[:, -2:]
    camera.center = tuple((low + high) / 2)
    canvas_height, canvas_width = viewer.window._qt_viewer.canvas.size
    camera.zoom = 0.95 * min(canvas_height / (high - low)[0], canvas_width / (high - low)[1])


def write_batch_inputs(folder: Path, count: int = 3) -> None:
    """Write a few generated nuclei images as TIFF files, as inputs for the Batch widget."""
    from napari_unet.core.io import write_tiff
    from napari_unet.core.synthetic import synthetic_nuclei

    for index in range(count):
        image, _ = synthetic_nuclei((256, 256), count=30, seed=100 + index)
        write_tiff(folder / f"nuclei_{index + 1:02d}.tif", image)


def main(argv: list[str] | None = None) -> int:
    """Open napari, drive the widgets and write the screenshots.

    Returns:
        The exit code (0 on success).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TRAIN_EPOCHS, help="training epochs (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=TRAIN_MINUTES,
                        help="training time budget in minutes (default: %(default)s)")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import Qt

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    # The batch inputs' folder name shows in the Batch widget; keep it readable.
    work = Path(tempfile.mkdtemp(prefix="experiment-"))
    viewer = napari.Viewer(show=True, title="napari")
    try:
        viewer.window.resize(*WINDOW_SIZE)
        viewer.open_sample("napari-unet-loop", "nuclei")
        image_layer = viewer.layers["nuclei"]
        truth_layer = viewer.layers["nuclei ground truth"]

        # -- Train ---------------------------------------------------------------------
        train_dock, train = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Train")
        train.image.value = image_layer
        train.labels_layer.value = truth_layer
        # Small settings so that training shows progress within seconds on a CPU; the
        # widget itself picks a lighter network (depth 3, 16 channels) on the CPU.
        train.max_minutes.value = args.minutes
        train.epochs.value = args.epochs
        train.patch_size.value = 128
        train.batch_size.value = 4
        train.device.value = "cpu"
        # The prediction is shown with the Predict widget below; keep train.png about
        # the annotation (image + ground truth) and the training progress.
        train.predict_when_done.value = False
        viewer.layers.selection.active = truth_layer
        started = time.monotonic()
        train.start_training()
        # Start is enabled again when training has ended, successfully or not; a result
        # reaches the widget before that.
        process_events_until(lambda: train.start.enabled, 60 * args.minutes + 60, "training to finish")
        if train.model is None:
            raise RuntimeError(f"training failed ({train.status.value}); see the messages above")
        print(f"trained for {time.monotonic() - started:.0f} s: {train.status.value}")
        truth_layer.opacity = 0.5
        show_only(viewer, [image_layer, truth_layer])
        viewer.reset_view()
        save_screenshot(viewer, "train.png")

        # -- Predict -------------------------------------------------------------------
        predict_dock, predict = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Predict")
        settle(0.3)  # it opens as a tab beside Train
        # Put Predict beside Train instead, for the README screenshot below, so that both
        # show whole.
        viewer.window._qt_window.splitDockWidget(train_dock, predict_dock, Qt.Orientation.Horizontal)
        train_dock.hide()
        settle(0.3)
        viewer.window.resize(*WINDOW_SIZE)
        predict.image.value = image_layer
        predict.device.value = "cpu"
        # The Train widget has just put its model into the session, so the Predict widget
        # offers "model trained in this session" first; check that it did.
        if predict.model.source.value != "model trained in this session":
            raise RuntimeError(f"the Predict widget offers {predict.model.source.value!r}, not the session's model")
        predict.start()
        process_events_until(lambda: predict.run.enabled, 120, "the prediction")
        if predict.output is None or not predict.output.data.any():
            raise RuntimeError("the prediction failed or found no object; see the messages above")
        prediction_layer = predict.output
        prediction_layer.opacity = 0.6
        show_only(viewer, [image_layer, prediction_layer])
        viewer.layers.selection.active = prediction_layer
        viewer.reset_view()
        save_screenshot(viewer, "predict.png")

        # -- README screenshot: Train and Predict together -----------------------------
        train_dock.show()
        viewer.window.resize(*WIDE_WINDOW_SIZE)
        settle(0.3)
        viewer.window._qt_window.resizeDocks([train_dock, predict_dock], [460, 400], Qt.Orientation.Horizontal)
        viewer.reset_view()
        save_screenshot(viewer, "screenshot.png")

        # -- Batch ---------------------------------------------------------------------
        inputs = work / "images"
        inputs.mkdir()
        write_batch_inputs(inputs)
        batch_dock, batch = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Batch")
        settle(0.3)
        train_dock.hide()
        predict_dock.hide()
        viewer.window.resize(*WINDOW_SIZE)
        settle(0.3)
        # The right dock area keeps the width of the two docks above; give it back to the canvas.
        viewer.window._qt_window.resizeDocks([batch_dock], [460], Qt.Orientation.Horizontal)
        # One of the inputs is opened (through the plugin's TIFF reader) before the batch
        # runs: any layer added after it would empty the widget's list of results, which
        # this screenshot is meant to show.
        first_input = viewer.open(inputs / "nuclei_01.tif", plugin="napari-unet-loop")[0]
        show_only(viewer, [first_input])
        batch.inputs.value = str(inputs / "*.tif")
        batch.out_dir.value = work / "segmented"
        batch.device.value = "cpu"
        batch.start()
        process_events_until(lambda: batch.run.enabled, 120, "the batch")
        if batch.result is None or batch.result.failed:
            raise RuntimeError("the batch failed; see the messages above")
        viewer.layers.selection.active = first_input
        fit_view(viewer, first_input)
        save_screenshot(viewer, "batch.png")
    finally:
        viewer.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(_SETTINGS_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
