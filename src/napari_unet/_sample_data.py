"""napari sample data: generated fluorescence-like nuclei and their ground-truth labels."""

from __future__ import annotations


def sample_nuclei():
    """An image of touching nuclei and its labels, as napari layer data tuples."""
    from .core.synthetic import synthetic_nuclei

    image, labels = synthetic_nuclei((512, 512), count=110, seed=2015)
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei ground truth"}, "labels"),
    ]
