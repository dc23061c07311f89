"""The Predict widget: segment an image layer into a Labels layer, in a worker thread.

The core's :func:`~napari_unet.core.predict.predict_iter` runs in a napari worker; a
stack's Labels layer is created at once and fills in plane by plane as planes finish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    create_widget,
)

from ..core.errors import NapariUnetError
from ..core.prediction_settings import PredictionSettings
from ._common import (
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
    prediction_settings,
    report_error,
    show_error,
    show_info,
    spatial_scale,
    spatial_shape,
    threshold_setting,
    views_choice,
)

if TYPE_CHECKING:
    import napari


def _current_plane(viewer: napari.viewer.Viewer, layer) -> tuple[int, ...]:
    """Index of the plane of ``layer`` that the viewer shows (leading axes only)."""
    leading = len(spatial_shape(layer)) - 2
    if leading == 0:
        return ()
    position = layer.world_to_data(viewer.dims.point)
    shape = spatial_shape(layer)
    return tuple(int(np.clip(round(position[axis]), 0, shape[axis] - 1)) for axis in range(leading))


def _pixel_size_for(image, model) -> tuple[float, float] | None:
    """The layer's pixel size in the model's unit, when the model records one to compare it with.

    Raises:
        InputError: If the layer's unit cannot be converted to the model's.
    """
    from ..core.scale import pixel_size_for_model

    return pixel_size_for_model(model, *pixel_size(image))


def _layer_z_scale(image) -> float | None:
    """The z step of a z-stack layer in pixels, from its scale (None when the scale says nothing of it)."""
    scale = spatial_scale(image)
    if len(scale) < 3 or scale[-3] == scale[-1] == 1:
        return None  # napari's default scale: not a measurement
    return scale[-3] / scale[-1]


def start_prediction(
    viewer: napari.viewer.Viewer,
    dock: ScrollingDock,
    image,
    model,
    settings: PredictionSettings | None = None,
    diameter: float | None = None,
    probability: bool = False,
    current_plane_only: bool = False,
    volume: bool = False,
    z_scale: float | None = None,
    output=None,
    on_progress=None,
    on_finish=None,
):
    """Predict ``image`` (a napari Image layer) with ``model`` into a Labels layer, in a worker.

    Args:
        viewer: The viewer to add layers to.
        dock: The widget that asks; its callbacks stop once napari destroys it.
        image: The Image layer.
        model: A :class:`~napari_unet.core.bundle.Model`.
        settings: How to predict (None: the core's defaults).
        diameter: Typical object diameter in the image, in pixels; the image is rescaled
            so that its objects match the model's. Without it, the layer's pixel size
            (its scale) is used when both it and the model's pixel size are known.
        probability: Also add the foreground probability as an Image layer.
        current_plane_only: Predict only the plane the viewer shows, into ``output`` (or a
            new Labels layer).
        volume: Label the z-stack in 3D (see :func:`~napari_unet.core.predict.predict_iter`);
            not with ``current_plane_only``, which predicts one plane.
        z_scale: The z step in pixels, for ``volume`` (None: the layer's scale says it).
        output: Labels layer to write into (for ``current_plane_only``).
        on_progress: Called with each :class:`~napari_unet.core.predict.PredictProgress`.
        on_finish: Called when the worker ends (finished, failed or cancelled).

    Returns:
        ``(worker, labels_layer)``.
    """
    from napari.qt.threading import create_worker

    from ..core.predict import predict_iter

    shape = spatial_shape(image)
    plane_index = _current_plane(viewer, image) if current_plane_only else ()
    data = pixel_source(image, plane_index)  # read by the worker: a large file must not freeze napari
    placement = geometry(image)
    if output is None or output not in viewer.layers or tuple(output.data.shape) != shape:
        output = viewer.add_labels(np.zeros(shape, np.int32), name=f"{image.name} prediction", **placement)
    probability_layer = (
        viewer.add_image(np.zeros(shape, np.float32), name=f"{image.name} probability", colormap="magma",
                         contrast_limits=(0, 1), visible=False, **placement)
        if probability else None
    )
    stack_shape = shape[len(plane_index):-2]

    def show_plane(progress):
        if on_progress is not None:
            on_progress(progress)
        if progress.volume_labels is not None:
            # The planes shown as they came were each labelled alone; the volume's labels
            # replace them as each chunk of planes is labelled.
            first, labels = progress.volume_labels
            output.data.reshape(-1, *labels.shape[-2:])[first:first + len(labels)] = labels
            output.refresh()
        if progress.labels is None:
            return
        where = plane_index + (np.unravel_index(progress.plane, stack_shape) if stack_shape else ())
        output.data[where] = progress.labels
        output.refresh()
        if probability_layer is not None:
            probability_layer.data[where] = progress.probability
            probability_layer.refresh()

    volume = volume and not current_plane_only
    # The layers hold the results as they come: the worker keeps no second copy of them.
    worker = create_worker(
        guarded(predict_iter), model, data, settings, channel_axis=-1 if image.rgb else None,
        diameter=diameter or None, pixel_size=_pixel_size_for(image, model), volume=volume,
        z_scale=(z_scale or _layer_z_scale(image)) if volume else None, collect=False,
        _start_thread=False, _ignore_errors=True,
    )
    connect_worker(worker, dock, show_plane, lambda _prediction: None, "prediction", on_finish or (lambda: None))
    worker.start()
    return worker, output


class PredictWidget(ScrollingDock):
    """Dock widget that segments the chosen image with the chosen model.

    Args:
        viewer: The napari viewer.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._worker = None
        self.output = None  # the Labels layer of the last prediction
        self._output_image = None  # the image layer it segments
        self._cancelled = False
        self.image = create_widget(annotation="napari.layers.Image", label="image",
                                   options={"tooltip": "The image layer to segment."})
        self.model = ModelChooser(viewer, allow_scratch=False)
        self.tile_size, self.threshold, self.min_size, self.orientations = prediction_settings(self.model)
        self.diameter = FloatSpinBox(
            label="object diameter (px)", value=0.0, min=0.0, max=10_000.0, step=1.0,
            tooltip="Typical object diameter in this image, in pixels: the image is rescaled so that objects "
            "match the model's training data. 0: the layer's pixel size, when the model records one; else no "
            "rescaling, or in 3D the diameter estimated from the volume.",
        )
        self.estimate = PushButton(text="Estimate diameter",
                                   tooltip="Estimate the object diameter from a first prediction of the plane on screen "
                                   "(in 3D: of the volume on screen).")
        self.contrast_limits = contrast_limits_choice(
            "for stacks whose empty or out-of-focus planes must stay dark rather than look like objects.")
        self.probability = CheckBox(text="also add the probability layer", value=False,
                                    tooltip="Also add the foreground probability as a hidden image layer.")
        self.current_plane_only = CheckBox(text="predict current plane only", value=False,
                                           tooltip="Fast feedback: only the plane on screen, into the last prediction layer.")
        self.volume = CheckBox(text="3D: label the z-stack as a volume", value=False,
                               tooltip="Each object keeps one label through the planes it spans. The stack's last axis "
                               "before height and width is Z; an axis before it (T) gives one volume per time point.")
        self.z_step = FloatSpinBox(
            label="z step (px)", value=0.0, min=0.0, max=1000.0, step=0.1,
            tooltip="For 3D: the distance between planes over the pixel width. 0: from the layer's scale (as the "
            "file's voxel size sets it); isotropic, with a warning, when the layer has none.",
        )
        self.views = views_choice()
        self.device = device_choice()
        self.float32 = float32_choice()
        self.run = PushButton(text="Predict")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1000)
        self.contents.extend([
            self.image, self.model, self.tile_size, self.threshold, self.min_size, self.diameter, self.estimate,
            self.orientations, self.contrast_limits, self.probability, self.current_plane_only, self.volume,
            self.z_step, self.views, self.device,
            self.float32, self.run, self.cancel, self.progress,
        ])
        self.run.changed.connect(self.start)
        self.cancel.changed.connect(self.stop)
        self.estimate.changed.connect(self.estimate_diameter)
        self.when_closed(self.stop)  # a prediction of a closed dock has nowhere to go

    def _image_and_model(self, doing: str, check_scale: bool = False):
        """The chosen image layer and model, or None after telling the user what is wrong.

        Args:
            doing: What the user asked for, for the message.
            check_scale: Also check that the model can use the diameter (or the layer's
                pixel size), so that the mistake is said before any layer is added.
        """
        from ..core.errors import NapariUnetError
        from ..core.scale import scale_factor

        image = self.image.value
        if image is None:
            show_error("open or choose an image layer first")
            return None
        try:
            model = self.model.load()
            if check_scale:
                scale_factor(model, self.diameter.value or None, _pixel_size_for(image, model))
        except NapariUnetError as error:
            report_error(error, doing)
            return None
        return image, model

    def start(self, *_):
        """Predict in a worker thread; errors become notifications."""
        chosen = self._image_and_model("prediction", check_scale=True)
        if chosen is None:
            return
        image, model = chosen
        settings = self._settings(image)
        if settings is None:
            return
        # One job at a time: Cancel and the end of the job act on the one running.
        self.run.enabled, self.estimate.enabled, self.cancel.enabled = False, False, True
        self.progress.value = 0
        self._cancelled = False
        # One plane goes into the last prediction layer only if that segments the same image.
        same_image = self.output is not None and self._output_image is image
        self._output_image = image
        self._worker, self.output = start_prediction(
            self._viewer, self, image, model, settings, diameter=self.diameter.value,
            probability=self.probability.value, current_plane_only=self.current_plane_only.value,
            volume=self.volume.value, z_scale=self.z_step.value or None,
            output=self.output if self.current_plane_only.value and same_image else None,
            on_progress=self._on_progress, on_finish=self._on_finish,
        )

    def estimate_diameter(self, *_):
        """Estimate the objects' diameter on the plane on screen (in 3D: the volume), in a worker; fills the field."""
        from napari.qt.threading import create_worker

        from ..core.predict import estimate_diameter

        chosen = self._image_and_model("the diameter estimate")
        if chosen is None:
            return
        image, model = chosen
        settings = self._settings(image)
        if settings is None:
            return
        plane_index = _current_plane(self._viewer, image)
        # In 3D, the volume on screen (its objects are measured in 3D, as they will be labelled).
        volume = self.volume.value and not self.current_plane_only.value and len(plane_index) > 0
        pixels = pixel_source(image, plane_index[:-1] if volume else plane_index)
        self.run.enabled = self.estimate.enabled = False
        self._worker = create_worker(
            guarded(estimate_diameter), model, pixels, settings, channel_axis=-1 if image.rgb else None,
            volume=volume, z_scale=(self.z_step.value or _layer_z_scale(image)) if volume else None,
            _start_thread=False, _ignore_errors=True,
        )
        connect_worker(self._worker, self, None, self._on_estimated, "the diameter estimate", self._on_finish)
        self._worker.start()

    def _settings(self, image) -> PredictionSettings | None:
        """The settings the fields show, with ``image``'s contrast limits if chosen; None, said, if they are wrong."""
        try:
            return PredictionSettings(
                tile_size=self.tile_size.value or None, threshold=threshold_setting(self.threshold, self.model),
                min_size=self.min_size.value, device=self.device.value, amp=not self.float32.value,
                test_time_augmentation=self.orientations.value,
                intensity_range=intensity_range(self.contrast_limits, image), views=self.views.value)
        except NapariUnetError as error:
            report_error(error, "the prediction")
            return None

    def _on_estimated(self, diameter):
        if diameter is None:
            show_error("no objects of a size the model can be rescaled to were found to measure; "
                       "enter the diameter by hand")
            return
        self.diameter.value = round(float(diameter), 1)
        show_info(f"estimated object diameter: {diameter:.1f} px")

    def stop(self, *_):
        """Cancel the prediction (or diameter estimate) after the current batch of tiles."""
        if self._worker is not None:
            self._cancelled = self.cancel.enabled  # only a prediction can be cancelled by the user
            self._worker.quit()

    def _on_progress(self, progress):
        done = progress.plane * progress.total + progress.done
        self.progress.value = int(1000 * done / max(progress.planes * progress.total, 1))

    def _on_finish(self):
        self.run.enabled, self.estimate.enabled, self.cancel.enabled = True, True, False
        self._worker = None
        if self._cancelled:
            self._cancelled = False
            name = self.output.name if self.output is not None else "the prediction layer"
            show_info(f"prediction cancelled: the planes not predicted yet are empty in {name}")
