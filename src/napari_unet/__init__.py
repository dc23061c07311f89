"""napari-unet: fine-tune and apply U-Nets for microscopy segmentation, in napari or scripts.

The public API, for scripts and notebooks::

    import napari_unet as nu

    model = nu.load_model("path/to/model.safetensors")      # or an embedded model's name
    result = nu.predict(model, image)                        # labels and probability
    batch = nu.predict_files(model, "data/*.tif", "labels/") # TIFF files, one plane at a time
    trained = nu.train([nu.TrainingSample(image, labels)], model=model).model
    nu.save_model(trained, "finetuned.safetensors")
    nu.export_bioimageio(trained, "finetuned.zip")          # a bioimage.io model package

Importing the package is cheap: torch is imported only when one of these is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first access (PEP 562).
_API = {
    "Model": "napari_unet.core.bundle",
    "NetworkConfig": "napari_unet.core.model",
    "UNet": "napari_unet.core.model",
    "Normalization": "napari_unet.core.normalize",
    "AugmentConfig": "napari_unet.core.augment",
    "TrainingConfig": "napari_unet.core.train",
    "TrainingSample": "napari_unet.core.train",
    "TrainingProgress": "napari_unet.core.train",
    "TrainingResult": "napari_unet.core.train",
    "train": "napari_unet.core.train",
    "train_iter": "napari_unet.core.train",
    "Prediction": "napari_unet.core.predict",
    "PredictProgress": "napari_unet.core.predict",
    "predict": "napari_unet.core.predict",
    "predict_iter": "napari_unet.core.predict",
    "estimate_diameter": "napari_unet.core.predict",
    "predict_files": "napari_unet.core.batch",
    "predict_files_iter": "napari_unet.core.batch",
    "predict_array": "napari_unet.core.batch",
    "predict_array_iter": "napari_unet.core.batch",
    "BatchResult": "napari_unet.core.batch",
    "FileResult": "napari_unet.core.batch",
    "FileProgress": "napari_unet.core.batch",
    "load_model": "napari_unet.core.registry",
    "embedded_models": "napari_unet.core.registry",
    "save_model": "napari_unet.core.modelfile",
    "export_bioimageio": "napari_unet.core.bioimageio",
    "average_precision": "napari_unet.core.metrics",
    "pixel_scores": "napari_unet.core.metrics",
    "isbi_scores": "napari_unet.core.metrics",
    "synthetic_nuclei": "napari_unet.core.synthetic",
    "NapariUnetError": "napari_unet.core.errors",
    "InputError": "napari_unet.core.errors",
    "ModelFileError": "napari_unet.core.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs only
    from .core.augment import AugmentConfig
    from .core.batch import (
        BatchResult,
        FileProgress,
        FileResult,
        predict_array,
        predict_array_iter,
        predict_files,
        predict_files_iter,
    )
    from .core.bioimageio import export_bioimageio
    from .core.bundle import Model
    from .core.errors import InputError, ModelFileError, NapariUnetError
    from .core.metrics import average_precision, isbi_scores, pixel_scores
    from .core.model import NetworkConfig, UNet
    from .core.modelfile import save_model
    from .core.normalize import Normalization
    from .core.predict import Prediction, PredictProgress, estimate_diameter, predict, predict_iter
    from .core.registry import embedded_models, load_model
    from .core.synthetic import synthetic_nuclei
    from .core.train import (
        TrainingConfig,
        TrainingProgress,
        TrainingResult,
        TrainingSample,
        train,
        train_iter,
    )
