"""The Train widget: fine-tune a U-Net on labels painted in napari, in a worker thread.

The widget collects (image, labels) pairs and settings, then runs the core's
:func:`~napari_unet.core.train.train_iter` generator in a napari ``thread_worker``:
napari stays responsive, every step updates the progress bar and the live plot, and
Stop sets the generator's stop event so training ends after the current step and
returns the best model so far.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from ..core.defaults import BORDER_SIGMA, BORDER_W0
from ..core.prediction_settings import PredictionSettings
from ._common import (
    CLOSEST,
    SCRATCH,
    ModelChooser,
    ScrollingDock,
    connect_worker,
    contrast_limits_choice,
    device_choice,
    float32_choice,
    geometry,
    guarded,
    intensity_range,
    pixel_size,
    pixel_source,
    pixels,
    report_error,
    session_models,
    show_error,
    show_info,
    spatial_shape,
    wrapped_label,
)
from ._plot import TrainingPlot

if TYPE_CHECKING:
    import napari

CONVENTION = (
    "In a stack, planes holding at least one label are annotated; unlabeled pixels in them are "
    "background; planes without labels are ignored. With a regions layer, only its rectangles count."
)
ONLY_THE_LAYERS_ABOVE = "training on: the image and labels above"

class TrainWidget(ScrollingDock):
    """Dock widget that trains or fine-tunes a model on annotated layers.

    Args:
        viewer: The napari viewer.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        # Scrolling: the settings are taller than a laptop screen.
        super().__init__()
        self._viewer = viewer
        self._worker = None
        self._stop = threading.Event()
        self._closed = threading.Event()  # the dock was closed
        self._pairs: list[tuple] = []
        self.model = None  # the last model trained here
        self._prediction_options = {}  # how the trained image is predicted when training ends
        self._trained_image = None  # the image layer predicted when training is done
        self._start_chosen_by_training = False  # the closest embedded model: training says which it chose

        self.image = create_widget(annotation="napari.layers.Image", label="image",
                                   options={"tooltip": "The image layer to train on."})
        self.labels_layer = create_widget(annotation="napari.layers.Labels", label="labels", options={
            "tooltip": "Its annotation: a Labels layer of the same shape, every object with its own value."})
        self.regions = create_widget(
            annotation="napari.layers.Shapes", label="regions", options={"nullable": True},
        )
        self.regions.tooltip = "Optional: rectangles that mark the annotated regions."
        self.new_labels = PushButton(text="New labels layer for this image")
        self.add_pair = PushButton(text="Add pair")
        self.clear_pairs = PushButton(text="Clear pairs", tooltip="Train on the image and labels above only.")
        self.pairs_label = wrapped_label(ONLY_THE_LAYERS_ABOVE)
        self.convention = wrapped_label(CONVENTION)
        self.start_from = ModelChooser(viewer, allow_scratch=True, label="start from")
        self.max_minutes = FloatSpinBox(label="time budget (min)", value=3.0, min=0.05, max=10_000, step=0.5,
                                        tooltip="Training stops after this time and keeps the best model.")
        self.epochs = SpinBox(label="max epochs", value=200, min=1, max=1_000_000,
                              tooltip="Training also stops after this many passes over the annotations.")
        self.patch_size = SpinBox(label="patch size", value=256, min=32, max=2048, step=16,
                                  tooltip="Edge of the training patches in pixels; larger sees more context, costs more memory.")
        self.batch_size = SpinBox(label="batch size", value=4, min=1, max=256, tooltip="Patches per training step.")
        # 0 is "auto", the core's choice (core.train.TrainingConfig.learning_rate).
        self.learning_rate = FloatSpinBox(
            label="learning rate", value=0.0, min=0.0, max=1.0, step=0.0001,
            tooltip="Adam step size. auto (0): 0.001 for a new network; 0.0005 to fine-tune, or 0.0002 with "
            "fewer than 4 annotated images, where none is left whole to check that the model does not get worse, "
            "and from a model that already finds half the painted objects.")
        self.learning_rate.native.setDecimals(6)
        self.learning_rate.native.setSpecialValueText("auto")  # shown at 0, the minimum
        self.w0 = FloatSpinBox(label="border weight w0", value=BORDER_W0, min=0.0, max=100.0,
                               tooltip="How much the gaps between touching objects count (U-Net paper: 10).")
        self.sigma = FloatSpinBox(label="border sigma (px)", value=BORDER_SIGMA, min=0.5, max=50.0,
                                  tooltip="Width of the border weight in pixels (U-Net paper: 5).")
        self.augment = FloatSpinBox(label="augmentation", value=1.0, min=0.0, max=3.0, step=0.1,
                                    tooltip="Strength of elastic, rotation and gray-value augmentation; 0 = off.")
        self.diameter = FloatSpinBox(
            label="object diameter (px)", value=0.0, min=0.0, max=10_000.0, step=1.0,
            tooltip="When fine-tuning: the typical object diameter in these images, in pixels. The images are "
            "rescaled so that objects match the starting model's, which the new model keeps; for a z-stack, the "
            "objects' widest, as 3D prediction measures it. 0: no rescaling (or the layer's pixel size, when the "
            "model records one): the new model records the annotated objects' median size.",
        )
        self.contrast_limits = contrast_limits_choice(
            "as when predicting with this setting, so that the model learns the planes as it will see them.")
        self.device = device_choice()
        self.float32 = float32_choice()
        self.predict_when_done = CheckBox(text="predict the image when done", value=True,
                                          tooltip="Segment the trained image with the new model as soon as training ends.")
        self.start = PushButton(text="Start training")
        self.stop = PushButton(text="Stop", enabled=False)
        self.save = PushButton(text="Save model...", enabled=False)
        self.export = PushButton(text="Export bioimage.io package...", enabled=False,
                                 tooltip="Write the model as a bioimage.io model package (.zip) for the BioImage "
                                 "Model Zoo and the tools that read it; needs napari-unet-loop[bioimageio].")
        self.progress = ProgressBar(label="progress", value=0, max=1000)
        self.status = wrapped_label()
        self.contents.extend([
            self.image, self.labels_layer, self.regions, self.new_labels, self.add_pair, self.clear_pairs, self.pairs_label,
            self.convention, self.start_from, self.max_minutes, self.epochs, self.patch_size, self.batch_size,
            self.learning_rate, self.w0, self.sigma, self.augment, self.diameter, self.contrast_limits, self.device,
            self.float32, self.predict_when_done,
            self.start, self.stop, self.save, self.export, self.progress, self.status,
        ])
        self.plot = TrainingPlot()
        self.contents.native.layout().addWidget(self.plot)

        self.new_labels.changed.connect(self._create_labels_layer)
        self.start_from.on_change(self._offer_diameter)
        self._offer_diameter()
        self.add_pair.changed.connect(self._add_pair)
        self.clear_pairs.changed.connect(self._clear_pairs)
        # A pair whose layer is deleted is no longer trained on.
        viewer.layers.events.removed.connect(self._forget_removed_layers)
        self.start.changed.connect(self.start_training)
        self.stop.changed.connect(self.stop_training)
        self.save.changed.connect(self._save_dialog)
        self.export.changed.connect(self._export_dialog)
        # Closing the dock widget (or napari) ends training cleanly after the current step,
        # and nothing is predicted after it.
        stop, closed = self._stop, self._closed
        self.when_closed(lambda: (closed.set(), stop.set()))

    # -- inputs ---------------------------------------------------------------------------

    def _offer_diameter(self, *_):
        self.diameter.enabled = self.start_from.source.value != SCRATCH

    def _create_labels_layer(self, *_):
        image = self.image.value
        if image is None:
            show_error("open or choose an image first")
            return
        layer = self._viewer.add_labels(np.zeros(spatial_shape(image), np.uint32), name=f"{image.name} labels",
                                        **geometry(image))
        self.labels_layer.reset_choices()
        self.labels_layer.value = layer

    def _add_pair(self, *_):
        if self.image.value is None or self.labels_layer.value is None:
            show_error("choose an image and a labels layer to add")
            return
        pair = (self.image.value, self.labels_layer.value)
        if pair not in self._pairs:
            self._pairs.append(pair)
        self._show_pairs()

    def _clear_pairs(self, *_):
        self._pairs.clear()
        self._show_pairs()

    def _forget_removed_layers(self, event):
        kept = [pair for pair in self._pairs if event.value not in pair]
        if len(kept) != len(self._pairs):
            self._pairs = kept
            self._show_pairs()

    def _show_pairs(self):
        names = ", ".join(f"{image.name} + {labels.name}" for image, labels in self._pairs)
        self.pairs_label.value = f"training on: {names}" if names else ONLY_THE_LAYERS_ABOVE

    def _training_pairs(self) -> list[tuple]:
        return list(self._pairs) or [(self.image.value, self.labels_layer.value)]

    def _samples(self):
        """Training samples from the chosen layers: copies of the labels, so that painting can go on
        meanwhile, and the images as the layers hold them, to be read in the worker."""
        from ..core.annotation import labelled_planes_mask, regions_mask
        from ..core.errors import InputError
        from ..core.train import TrainingSample

        samples = []
        for image, labels in self._training_pairs():
            if image is None or labels is None:
                raise InputError("choose an image layer and a labels layer (or create one with the button)")
            if image not in self._viewer.layers or labels not in self._viewer.layers:
                raise InputError(f"the layer {image.name} or {labels.name} is no longer in the viewer")
            if tuple(labels.data.shape) != spatial_shape(image):
                raise InputError(
                    f"the labels layer {labels.name} (shape {labels.data.shape}) does not match the image "
                    f"{image.name} (shape {spatial_shape(image)}); create a labels layer for this image"
                )
            label_data = pixels(labels)
            regions = self.regions.value
            if regions is not None:
                # Corners in the image's data coordinates; a 2D regions layer over a stack
                # keeps only (y, x), so its rectangles annotate every plane.
                rectangles = [
                    np.array([image.world_to_data(regions.data_to_world(point))[-regions.ndim:] for point in shape])
                    for shape, kind in zip(regions.data, regions.shape_type) if kind == "rectangle"
                ]
                if not rectangles:
                    raise InputError(f"the regions layer {regions.name} has no rectangles")
                mask = regions_mask(label_data.shape, rectangles)
            else:
                mask = labelled_planes_mask(label_data)
            if not mask.any():
                raise InputError(f"nothing is annotated in {labels.name}: paint at least one object first")
            # The image is read in the worker (a large file must not freeze napari); the labels
            # are copied now, so that painting can go on meanwhile.
            samples.append(TrainingSample(pixel_source(image), label_data, mask, name=image.name,
                                          intensity_range=intensity_range(self.contrast_limits, image)))
        return samples

    def _config(self):
        from ..core.augment import AugmentConfig
        from ..core.train import TrainingConfig

        return TrainingConfig(
            epochs=self.epochs.value, max_minutes=self.max_minutes.value, patch_size=self.patch_size.value,
            batch_size=self.batch_size.value, learning_rate=self.learning_rate.value or None, w0=self.w0.value,
            sigma=self.sigma.value, device=self.device.value, augment=AugmentConfig(strength=self.augment.value),
            amp=not self.float32.value,
        )

    # -- training -------------------------------------------------------------------------

    def start_training(self, *_):
        """Check the inputs and start training in a worker thread (errors become notifications)."""
        from napari.qt.threading import create_worker

        from ..core.device import resolve_device
        from ..core.errors import NapariUnetError
        from ..core.model import scratch_network_config
        from ..core.train import train_iter
        from ..core.units import common_pixel_size

        try:
            samples = self._samples()
            size, unit = common_pixel_size((image.name, *pixel_size(image)) for image, _ in self._training_pairs())
            model = self.start_from.load()
            config = self._config()
        except NapariUnetError as error:
            report_error(error, "training")
            return
        network = scratch_network_config(resolve_device(config.device))
        # Only a fine-tuned model has objects of its own size to rescale the images to (the
        # field is off for a new one).
        diameter = (self.diameter.value or None) if model is not None else None
        self._trained_image = self._training_pairs()[0][0]
        self._start_chosen_by_training = self.start_from.source.value == CLOSEST
        self._prediction_options = {
            "settings": PredictionSettings(device=config.device, amp=config.amp,
                                           intensity_range=samples[0].intensity_range),
            # A fine-tuned model keeps its own object size; predicting this image needs the same rescaling.
            "diameter": diameter,
        }
        self._stop.clear()
        self._closed.clear()  # a training started here runs in a dock that is open again
        self.plot.clear()
        self.progress.value = 0
        self.status.value = "preparing..."
        self._set_running(True)
        self._worker = create_worker(
            guarded(train_iter), samples, model=model, config=config, network_config=network, stop=self._stop,
            pixel_size=size, pixel_unit=unit, diameter=diameter, _start_thread=False, _ignore_errors=True,
        )
        connect_worker(self._worker, self, self._on_progress, self._on_trained, "training",
                       lambda: self._set_running(False), on_error=lambda message: setattr(self.status, "value", message))
        self._worker.start()

    def stop_training(self, *_):
        """End training after the current step; the best model so far is kept."""
        self._stop.set()
        self.status.value = "stopping..."

    def _set_running(self, running: bool):
        self.start.enabled = not running
        self.stop.enabled = running
        self.save.enabled = self.export.enabled = not running and self.model is not None
        if not running:
            self._worker = None

    def _on_progress(self, progress):
        from ..core.threads import BUSY_CPU_SHARE

        fraction_steps = progress.step / max(progress.total_steps, 1)
        fraction_time = progress.elapsed / (60 * self.max_minutes.value)
        self.progress.value = int(1000 * min(max(fraction_steps, fraction_time), 1.0))
        self.plot.add("loss", progress.step, progress.loss)
        if progress.validation is not None:
            self.plot.add("iou", progress.step, progress.validation["iou"])
            if "ap50" in progress.validation:
                self.plot.add("ap50", progress.step, progress.validation["ap50"])
        best = f", best score {progress.best_score:.3f}" if progress.best_score is not None else ""
        self.status.value = f"step {progress.step}, loss {progress.loss:.4f}{best}, {progress.elapsed:.0f} s"
        if progress.busy_cpu is not None and progress.busy_cpu >= BUSY_CPU_SHARE:
            self.status.value += f"; slowed: other programs use {progress.busy_cpu:.0%} of the CPU"

    def _on_trained(self, result):
        from ..core.threads import BUSY_CPU_SHARE, busy_cpu_message

        if result.model.training["steps"] == 0:
            # Stopped before the first step: nothing was learned, so nothing replaces the
            # session's model (an untrained network, or a copy of the one started from).
            self.status.value = "stopped before the first step; nothing trained"
            show_info("training stopped before its first step; no new model")
            return
        self.model = result.model
        session_models(self._viewer).set_latest(result.model)
        self.progress.value = 1000
        self.status.value = f"done ({result.stop_reason}) after {result.model.training['steps']} steps"
        if self._start_chosen_by_training and result.started_from:
            self.status.value += f" from {result.started_from}, the embedded model closest to the images"
        if result.unchanged:
            self.status.value += "; no clear gain, the starting model is kept"
            show_info(f"training finished ({result.stop_reason}): {result.why_unchanged()}; the starting model is "
                      "kept as it was, for this session")
        else:
            show_info(f"training finished ({result.stop_reason}); the model is kept for this session")
        if result.busy_cpu is not None and result.busy_cpu >= BUSY_CPU_SHARE:
            show_info(busy_cpu_message(result.busy_cpu))
        image = self._trained_image
        wanted = self.predict_when_done.value and not self._closed.is_set()
        if wanted and image is not None and image not in self._viewer.layers:
            show_info(f"the layer {image.name} was removed during training; it is not predicted")
        elif wanted and image is not None:
            from ..core.errors import NapariUnetError
            from ._predict import start_prediction

            try:
                start_prediction(self._viewer, self, image, result.model, **self._prediction_options)
            except NapariUnetError as error:  # a layer the model cannot rescale, for one
                report_error(error, "the prediction of the trained image")

    # -- saving ---------------------------------------------------------------------------

    def save_model(self, path: str | Path) -> Path | None:
        """Save the trained model (atomically) and return the path written."""
        return self._written(lambda model: model.save(path), "saving the model", "model saved to")

    def _save_dialog(self, *_):
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self.native, "Save model", "model.safetensors", "Models (*.safetensors)")
        if path:
            self.save_model(path)

    def export_package(self, path: str | Path) -> Path | None:
        """Write the trained model as a bioimage.io package at ``path`` and return the path written.

        The file dialog has asked before replacing a file, so an existing one is replaced.
        """
        from ..core.bioimageio import export_bioimageio

        return self._written(lambda model: export_bioimageio(model, path, overwrite=True), "exporting the model",
                             "bioimage.io package written to")

    def _written(self, write, doing: str, done: str) -> Path | None:
        """``write(model)`` of the trained model, said in a notification: the path written, or None after an error.

        Args:
            write: Writes the model and returns the path written.
            doing: What failed, for the error ("saving the model").
            done: What the notification says before the path.
        """
        if self.model is None:
            show_error("train a model first")
            return None
        from ..core.errors import NapariUnetError

        try:
            written = write(self.model)
        except (OSError, NapariUnetError) as error:
            report_error(error, doing)
            return None
        show_info(f"{done} {written}")
        return written

    def _export_dialog(self, *_):
        from qtpy.QtWidgets import QFileDialog

        name = f"{self.model.name or 'model'}.zip" if self.model is not None else "model.zip"
        path, _ = QFileDialog.getSaveFileName(self.native, "Export bioimage.io package", name,
                                              "bioimage.io packages (*.zip)")
        if path:
            self.export_package(path)
