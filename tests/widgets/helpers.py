"""What the widget tests share: docking as napari does, quick training settings, tiny models."""

from __future__ import annotations

from napari_unet.core.bundle import Model
from napari_unet.core.model import NetworkConfig


def docked(viewer, widget_class):
    """The widget docked in the viewer, as napari does it (so its layer lists follow the viewer)."""
    widget = widget_class(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def fast_settings(widget, minutes=0.05):
    """Train widget settings that train for seconds on a CPU."""
    widget.max_minutes.value = minutes
    widget.patch_size.value = 48
    widget.batch_size.value = 2
    widget.device.value = "cpu"


def tiny_model(**kwargs) -> Model:
    """An untrained network; three classes, so that any threshold finds seeds."""
    return Model.new(NetworkConfig(depth=2, base_width=4, num_classes=3), **kwargs)


def tiny_model_in_session(viewer, **kwargs) -> Model:
    """An untrained network as the session's model."""
    from napari_unet.widgets._common import session_models

    model = tiny_model(**kwargs)
    session_models(viewer).set_latest(model)
    return model
