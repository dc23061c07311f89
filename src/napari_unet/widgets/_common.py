"""What the napari widgets share: model choice, the session's model, layer geometry, messages.

Everything here is glue between napari layers and :mod:`napari_unet.core`; nothing
computes on pixels. torch is imported only when a widget first needs a model or a device.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

from ..core.prediction_settings import DEFAULT_SETTINGS

if TYPE_CHECKING:
    import napari

    from ..core.bundle import Model

SCRATCH = "new model (from scratch)"
SESSION = "model trained in this session"
FILE = "model file..."
EMBEDDED_PREFIX = "embedded: "
CLOSEST = "embedded: closest to the images"


class SessionModels:
    """The models trained in one napari viewer; widgets of the viewer share them."""

    changed = Signal()

    def __init__(self):
        self.latest: Model | None = None

    def set_latest(self, model: Model) -> None:
        self.latest = model
        self.changed.emit()


_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_models(viewer: napari.viewer.Viewer) -> SessionModels:
    """The :class:`SessionModels` of ``viewer`` (created on first use)."""
    # napari hands each dock widget its own proxy of the viewer; key by the viewer itself.
    viewer = getattr(viewer, "__wrapped__", viewer)
    if viewer not in _sessions:
        _sessions[viewer] = SessionModels()
    return _sessions[viewer]


def embedded_model_names() -> list[str]:
    from ..core.registry import embedded_models

    return list(embedded_models())


class ModelChooser(Container):
    """A model source: an embedded model, the session's model, a file, or (for training) none.

    Args:
        viewer: The viewer whose session models are offered.
        allow_scratch: Offer training from scratch.
    """

    def __init__(self, viewer: napari.viewer.Viewer, allow_scratch: bool, label: str = "model"):
        # The label goes into the label column of the widget that holds the chooser, lined
        # up with the other settings' labels (a label column of its own would not be).
        explanation = ("Embedded models are shipped with napari-unet; the session's model is the last one "
                       "trained in this napari window; a model file is a .safetensors file saved earlier.")
        if allow_scratch:
            explanation += (" Closest to the images: the embedded model that finds the training images most like "
                            "its own, judged from its predictions of a few of them when training starts.")
        super().__init__(labels=False, layout="vertical", label=label, tooltip=explanation)
        self._session = session_models(viewer)
        self._allow_scratch = allow_scratch
        self.source = ComboBox(choices=self._choices, tooltip=explanation)
        self.path = FileEdit(label="model file", mode="r", filter="*.safetensors", visible=False)
        self.extend([self.source, self.path])
        self.margins = (0, 0, 0, 0)
        self.source.changed.connect(self._update_visibility)
        self._session.changed.connect(self.refresh)
        self._update_visibility()

    def _choices(self, _widget=None) -> list[str]:
        # The first choice is the default: the freshest model, then the embedded ones.
        choices = [SESSION] if self._session.latest is not None else []
        if self._allow_scratch:  # training: fine-tuning carries furthest from the closest model
            choices.append(CLOSEST)
        choices += [EMBEDDED_PREFIX + name for name in embedded_model_names()]
        if self._allow_scratch:
            choices.append(SCRATCH)
        return choices + [FILE]

    def refresh(self) -> None:
        """Offer the current choices and select a freshly trained model.

        A model file the user has already picked stays selected.
        """
        self.source.reset_choices()
        picked_file = self.source.value == FILE and Path(self.path.value).is_file()
        if self._session.latest is not None and not picked_file:
            self.source.value = SESSION

    def _update_visibility(self, *_):
        self.path.visible = self.source.value == FILE

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the chosen model may have changed."""
        self.source.changed.connect(lambda *_: callback())
        self.path.changed.connect(lambda *_: callback())
        self._session.changed.connect(callback)

    def recorded_threshold(self) -> float | None:
        """The chosen model's own post-processing threshold, read without loading weights.

        None when there is no model (yet) or its file cannot be read: loading it will
        tell the user why.
        """
        from ..core.errors import NapariUnetError
        from ..core.modelfile import read_metadata, recorded_threshold
        from ..core.registry import embedded_models

        choice = self.source.value
        try:
            if choice in (SCRATCH, CLOSEST):  # CLOSEST: not chosen yet
                return None
            if choice == SESSION:
                return self._session.latest.threshold if self._session.latest is not None else None
            if choice == FILE:
                path = Path(self.path.value)
                return recorded_threshold(read_metadata(path), path) if path.is_file() else None
            return recorded_threshold(embedded_models()[choice[len(EMBEDDED_PREFIX):]])
        except (NapariUnetError, KeyError):
            return None

    def load(self) -> Model | str | None:
        """The chosen model (None for "from scratch"; ``"closest"``, which training resolves, for :data:`CLOSEST`).

        Raises:
            NapariUnetError: If the model file cannot be used.
        """
        from ..core.errors import ModelFileError
        from ..core.registry import load_model

        choice = self.source.value
        if choice == SCRATCH:
            return None
        if choice == CLOSEST:
            from ..core.model_choice import CLOSEST as CLOSEST_NAME

            return CLOSEST_NAME
        if choice == SESSION:
            if self._session.latest is None:
                raise ModelFileError("no model has been trained in this session yet")
            return self._session.latest
        if choice == FILE:
            if str(self.path.value) in ("", "."):  # the field's value before a file is chosen
                raise ModelFileError("choose a model file first")
            return load_model(self.path.value)
        return load_model(choice[len(EMBEDDED_PREFIX):])


def threshold_setting(threshold: FloatSpinBox, model: ModelChooser) -> float | None:
    """The threshold to give the core: None where the field shows the chosen model's own.

    With None the core takes the threshold of the model that segments the image, which
    for a colour image may be another: ``nuclei`` hands H&E tissue to ``nuclei-he``.
    """
    recorded = model.recorded_threshold()
    return None if recorded is not None and np.isclose(threshold.value, recorded) else threshold.value


def prediction_settings(model: ModelChooser) -> tuple[SpinBox, FloatSpinBox, SpinBox, CheckBox]:
    """The tile size, threshold, smallest object and test-time augmentation fields of the widgets that predict.

    The tile size reads 0, "auto", until the user sets one: pass ``tile_size.value or
    None`` to the core. The threshold shows the chosen model's own until the user sets
    another value.
    """
    # 0 is "auto", the core's default (1024 on a GPU, up to 2048 on a CPU as memory
    # allows): a typical plane goes through the network in one tile. Users set a size
    # when the GPU runs out of memory.
    tile_size = SpinBox(label="tile size (0: auto)", value=0, min=0, max=8192, step=64, tooltip=(
        "Largest tile edge in pixels; smaller tiles need less memory. 0 (auto): 1024 on a GPU, up to 2048 "
        "on a CPU as memory allows. At least four times the network's context (448 for the embedded models): "
        "smaller sizes are raised to it."))
    threshold = FloatSpinBox(label="threshold", value=0.5, min=0.01, max=0.99, step=0.05, tooltip=(
        "Probability threshold of the post-processing: higher separates touching objects more, lower keeps "
        "fainter ones (under 0.5 a two-class model's objects only grow wider). Set to the model's own "
        "(chosen on its validation images) when the model changes."))
    min_size = SpinBox(label="min object size (px)", value=DEFAULT_SETTINGS.min_size, min=0, max=1_000_000,
                       tooltip="Objects smaller than this many pixels are removed.")
    orientations = CheckBox(text="average 8 orientations (8x slower)", value=False, tooltip=(
        "Test-time augmentation: predict each plane turned and mirrored in all eight ways and average, as the "
        "U-Net paper did: more accurate outlines, especially of EM membranes."))
    shown = [threshold.value]  # the last value the model put there

    def follow_model(*_):
        recorded = model.recorded_threshold()
        if recorded is not None and np.isclose(threshold.value, shown[0]):
            threshold.value = shown[0] = recorded

    model.on_change(follow_model)
    follow_model()
    return tile_size, threshold, min_size, orientations


class _VerticalScrollArea(QScrollArea):
    """Scrolls a widget up and down, at its natural height at the top, and is always wide enough for it."""

    def __init__(self, widget: QWidget):
        super().__init__()
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        # A dock taller than the widget leaves the space below it empty, rather than
        # spreading the widget's rows apart.
        holder = QWidget()
        layout = QVBoxLayout(holder)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(widget)
        layout.addStretch()
        self.setWidget(holder)
        holder.installEventFilter(self)

    def minimumSizeHint(self) -> QSize:
        inner = self.widget().minimumSizeHint().width()
        return QSize(inner + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth(),
                     super().minimumSizeHint().height())

    def eventFilter(self, watched, event) -> bool:
        # napari's style sheet, applied once docked, widens the contents: ask the dock again.
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)


class _UndockWatcher(QObject):
    """Calls back when a widget is taken out of its parent (napari's dock closing)."""

    def __init__(self, widget: QWidget, callback: Callable[[], None]):
        super().__init__(widget)
        self._callback = callback
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and watched.parentWidget() is None:
            self._callback()
        return False


class ScrollingDock(Container):
    """A dock widget whose contents scroll when they are taller than the window.

    napari docks a magicgui widget's ``native`` QWidget, which for a container made with
    ``scrollable=True`` is the contents without their scroll area (the area is left
    behind and never shown), so such a widget neither scrolls nor fits its dock. Here the
    docked widget is a plain one that holds a scroll area around an inner container,
    :attr:`contents`, where subclasses put their widgets.
    """

    def __init__(self):
        super().__init__(labels=False)
        self.contents = Container()
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(_VerticalScrollArea(self.contents.native))
        self.native.setObjectName(DOCK_NAME)
        destroyed = self._destroyed = threading.Event()
        self.native.destroyed.connect(lambda *_: destroyed.set())
        self._tabs = _TabWithOtherDocks(self.native)

    def reset_choices(self, *_) -> None:
        """Update the layer choices; napari calls it whenever layers change."""
        self.contents.reset_choices()

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the user closes the dock, or napari closes.

        Closing a dock takes the widget out of it without destroying it (the widget's
        worker and signals keep it alive), so both are watched. ``callback`` should not
        refer to the widget, which may be gone.
        """
        self.native.destroyed.connect(lambda *_: callback())
        _UndockWatcher(self.native, callback)

    def unless_destroyed(self, callback: Callable | None) -> Callable | None:
        """``callback``, made to do nothing once napari has destroyed this dock's Qt widgets.

        Closing the napari window destroys them while a worker may still be running: its
        last signals must not touch them.
        """
        if callback is None:
            return None
        destroyed = self._destroyed

        def call(*args):
            if not destroyed.is_set():
                return callback(*args)
            return None

        return call


#: Object name of every napari-unet dock's widget, by which the docks find each other.
DOCK_NAME = "napari-unet dock"
_SHOWN_ORDER = "napari_unet_shown_order"


class _TabWithOtherDocks(QObject):
    """Puts a napari-unet dock in a tab beside the napari-unet dock already open, when it is first shown.

    napari stacks docks one above the other: with Train, Predict and Batch open in a
    1280x800 window, Predict and Batch were 89 pixels tall each. As tabs of one dock, each
    has the window's height and the canvas keeps its width.
    """

    _shown = itertools.count(1)  # the order in which docks were first shown

    def __init__(self, widget: QWidget):
        super().__init__(widget)
        self._widget = widget
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Show:
            self._widget.removeEventFilter(self)
            self._widget.setProperty(_SHOWN_ORDER, next(self._shown))
            QTimer.singleShot(0, self._join)  # once napari has placed the dock
        return False

    def _join(self) -> None:
        dock = self._widget.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        window = dock.parentWidget() if dock is not None else None
        if not isinstance(window, QMainWindow) or dock.isFloating():
            return
        order = self._widget.property(_SHOWN_ORDER)
        for other in window.findChildren(QDockWidget):
            ours = other.findChild(QWidget, DOCK_NAME)
            # Only docks shown before this one: two docks opened at once join one way.
            if (ours is not None and other is not dock and other.isVisible() and not other.isFloating()
                    and window.dockWidgetArea(other) == window.dockWidgetArea(dock)
                    and (ours.property(_SHOWN_ORDER) or order) < order):
                window.tabifyDockWidget(other, dock)
                dock.raise_()  # the dock just opened is the one wanted
                return


def wrapped_label(value: str = "") -> Label:
    """A label whose long lines wrap, so that a message never widens its dock past the window."""
    label = Label(value=value)
    label.native.setWordWrap(True)
    return label


def device_choice() -> ComboBox:
    """The device setting: "auto" first, then the devices found on this machine (imports torch)."""
    from ..core.device import available_devices

    choices = available_devices()
    return ComboBox(label="device", choices=choices, tooltip=(
        f"Where to compute. Found on this computer: {', '.join(choices[1:])}. "
        "auto takes a CUDA GPU, then Apple MPS, then the CPU."))


def float32_choice() -> CheckBox:
    """The setting that runs the network in float32 instead of mixed precision (the command line's ``--float32``)."""
    return CheckBox(
        label="float32", value=False,
        tooltip="Run the network in float32. Off: mixed precision where the device is faster with it (float16 "
        "on CUDA GPUs, bfloat16 on CPUs with Intel AMX), about twice as fast; a few outlines move.")


def views_choice() -> ComboBox:
    """How a volume labelled in 3D is seen (the command line's ``--views``)."""
    from ..core.prediction_settings import DEFAULT_SETTINGS, VIEWS

    return ComboBox(label="3D views", choices=VIEWS, value=DEFAULT_SETTINGS.views, tooltip=(
        "For 3D: xyz predicts the volume's XZ and YZ side views too and averages them with its planes, which "
        "parts crowded objects and ends them in z better, for about 1 + 2 x the z step times the work and the "
        "volume held whole; xy its planes alone; auto: xyz where the volume fits whole in memory, else xy."))


def contrast_limits_choice(purpose: str) -> CheckBox:
    """The setting that scales intensities by an image layer's contrast limits; ``purpose`` ends its tooltip."""
    return CheckBox(text="scale intensities by the contrast limits", value=False, tooltip=(
        "Map the layer's contrast limits (what napari shows from black to white) to the model's range in every "
        f"plane, instead of stretching each plane from its own 1st to 99.8th percentile: {purpose}"))


def intensity_range(choice: CheckBox, layer) -> tuple[float, float] | None:
    """The layer's contrast limits when ``choice`` is ticked (napari keeps them increasing), else None."""
    if not choice.value:
        return None
    low, high = (float(limit) for limit in layer.contrast_limits)
    return low, high


def spatial_shape(layer) -> tuple[int, ...]:
    """Shape of an image layer without its RGB axis."""
    shape = tuple(layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def spatial_scale(layer) -> tuple[float, ...]:
    """The layer's scale for its spatial axes (one per axis of :func:`spatial_shape`)."""
    return tuple(float(s) for s in layer.scale[: len(spatial_shape(layer))])


def geometry(layer) -> dict:
    """Layer keywords that put a derived layer (labels, probability) exactly over ``layer``."""
    count = len(spatial_shape(layer))
    return {
        "scale": spatial_scale(layer),
        "translate": tuple(float(t) for t in layer.translate[:count]),
        "units": tuple(layer.units[:count]),
        # A rotated or sheared image keeps its layers in place (the transforms of its spatial axes).
        "rotate": np.array(layer.rotate),
        "shear": np.array(layer.shear),
        "affine": np.array(layer.affine.affine_matrix),
    }


def pixel_size(layer) -> tuple[tuple[float, float] | None, str]:
    """The layer's physical pixel size ``(y, x)`` and the symbol of its unit.

    None when the scale is 1 x 1 in napari's default unit, "pixel" (a layer nobody
    calibrated); 1 x 1 micrometers is a pixel size.
    """
    from ..core.units import is_length, length_unit

    scale = spatial_scale(layer)[-2:]
    units = getattr(layer, "units", None)
    unit = length_unit(str(units[-1]) if units else "")
    if all(np.isclose(s, 1.0) for s in scale) and not is_length(unit):
        return None, ""
    return (scale[0], scale[1]), unit


def pixel_source(layer, plane: tuple[int, ...] = ()):
    """The layer's pixels at full resolution, or one plane of them, as the layer holds them.

    Of a multiscale image, the finest level. A dask or zarr array (a large file opened
    lazily) is read only when converted to numpy: hand it to the core in a worker, so
    that reading does not freeze napari.

    Args:
        layer: An Image or Labels layer.
        plane: Index of the plane along the leading axes (empty: all of it).
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return data[plane] if plane else data


def pixels(layer, plane: tuple[int, ...] = ()) -> np.ndarray:
    """A numpy copy of :func:`pixel_source`, read here: for labels the user may paint meanwhile."""
    return np.array(pixel_source(layer, plane))


def error_message(error: BaseException, doing: str) -> str:
    """An error in plain words: the core's own message, or what failed and why."""
    from ..core.errors import NapariUnetError

    if isinstance(error, NapariUnetError):
        return str(error)
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return f"{doing} ran out of memory; lower the batch size, patch size or tile size and try again"
    return f"{doing} failed: {error}"


def report_error(error: BaseException, doing: str) -> None:
    """Show an error as a napari notification in plain words, without a traceback dialog."""
    show_error(error_message(error, doing))


class WorkerFailure(Exception):
    """A RuntimeError from the core (CUDA out of memory, a device error), re-raised as such."""


def guarded(function: Callable) -> Callable:
    """Let RuntimeErrors of a core generator (or function) reach the worker's ``errored`` signal.

    superqt's workers take any RuntimeError for the sign of a deleted worker and drop it
    with a warning, and torch reports CUDA out-of-memory as one: without this wrapper the
    widget would wait forever instead of telling the user.
    """
    if not inspect.isgeneratorfunction(function):

        def call(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except RuntimeError as error:
                raise WorkerFailure(str(error)) from error

        return call

    def run(*args, **kwargs):
        try:
            return (yield from function(*args, **kwargs))
        except RuntimeError as error:
            raise WorkerFailure(str(error)) from error

    return run


def connect_worker(worker, dock: ScrollingDock, on_yield: Callable | None, on_return: Callable, doing: str,
                   on_finish: Callable, on_error: Callable | None = None) -> None:
    """Wire a napari worker to a dock widget: progress, result, errors and warnings as notifications.

    Args:
        worker: The napari worker, not started yet.
        dock: The widget whose callbacks these are; they stop once it is destroyed.
        on_yield: Called with each value a generator worker yields.
        on_return: Called with the worker's result.
        doing: What the worker does, for error messages ("training").
        on_finish: Called when the worker ends, however it ends.
        on_error: Called with the notification's message when the worker fails.
    """
    if hasattr(worker, "yielded"):  # generator workers only
        worker.yielded.connect(dock.unless_destroyed(on_yield))
    worker.returned.connect(dock.unless_destroyed(on_return))

    def failed(error: BaseException) -> None:
        message = error_message(error, doing)
        show_error(message)
        if on_error is not None:
            on_error(message)

    worker.errored.connect(dock.unless_destroyed(failed))
    # ``warned`` carries warnings.showwarning's arguments; the first is the warning itself.
    worker.warned.connect(lambda arguments: show_warning(str(arguments[0])))
    worker.finished.connect(dock.unless_destroyed(on_finish))


__all__ = [
    "ModelChooser",
    "ScrollingDock",
    "SessionModels",
    "session_models",
    "device_choice",
    "spatial_shape",
    "spatial_scale",
    "geometry",
    "pixel_size",
    "pixel_source",
    "pixels",
    "prediction_settings",
    "wrapped_label",
    "report_error",
    "connect_worker",
    "guarded",
    "show_error",
    "show_info",
]
