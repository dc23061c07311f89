"""The napari widgets: thin front ends over :mod:`napari_unet.core`.

This is the only part of the package that imports napari, magicgui and Qt.
"""

from ._batch import BatchWidget
from ._predict import PredictWidget
from ._train import TrainWidget

__all__ = ["TrainWidget", "PredictWidget", "BatchWidget"]
