"""Two promises of training that users build on: the best validated weights come back, and
what is not annotated teaches nothing."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet.core import train as train_module
from napari_unet.core.progress import run_to_end
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import TrainingConfig, TrainingSample, train_iter

FAST = {"patch_size": 64, "batch_size": 2, "device": "cpu", "augment": None}


def _config(**settings) -> TrainingConfig:
    settings = dict(FAST, **settings)
    if settings.pop("augment") is None:
        from napari_unet.core.augment import AugmentConfig

        settings["augment"] = AugmentConfig(strength=0)
    return TrainingConfig(**settings)


@pytest.fixture
def scripted_validations(monkeypatch):
    """Validation scores that training sees, in order, and the weights each was given."""
    scores = [0.30, 0.90, 0.50, 0.40, 0.20]
    seen: list[dict] = []

    def validate(model, planes, device, amp, tile_size=1024):
        seen.append({key: value.detach().clone() for key, value in model.network.state_dict().items()})
        score = scores[min(len(seen) - 1, len(scores) - 1)]
        return {"iou": score, "f1": score, "score": score}

    monkeypatch.setattr(train_module, "validate", validate)
    return seen


def _same_weights(network: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(value.cpu(), state[key]) for key, value in network.state_dict().items())


@pytest.mark.parametrize("ending", ["epochs", "stop", "time budget"])
def test_the_best_validated_weights_come_back_however_training_ends(scripted_validations, tiny_config, ending,
                                                                     monkeypatch):
    image, labels = synthetic_nuclei((96, 96), count=8, seed=2)
    stop = threading.Event()
    config = _config(epochs=5 if ending == "epochs" else 100, steps_per_epoch=2, val_fraction=0.3,
                     max_minutes=1.0 if ending == "time budget" else None)
    if ending == "time budget":
        # Training's clock runs out once four validations are done.
        clock = SimpleNamespace(monotonic=lambda: 0.0 if len(scripted_validations) < 4 else 1e6)
        monkeypatch.setattr(train_module, "time", clock)
    generator = train_iter([TrainingSample(image, labels)], network_config=tiny_config, config=config, stop=stop)
    while True:
        try:
            next(generator)
        except StopIteration as finished:
            result = finished.value
            break
        if ending == "stop" and len(scripted_validations) == 5:
            stop.set()
    assert result.stop_reason == {"stop": "stopped"}.get(ending, ending)
    assert len(scripted_validations) == 5  # three validations after the best one, all worse
    assert _same_weights(result.model.network, scripted_validations[1])  # scored 0.90
    assert not _same_weights(result.model.network, scripted_validations[-1])


def test_only_the_annotated_rectangle_teaches(tiny_config):
    image, labels = synthetic_nuclei((256, 256), count=40, seed=7)
    mask = np.zeros(labels.shape, bool)
    mask[100:150, 90:140] = True  # one rectangle, 4 % of the image
    # The other run's labels lack every object far from the rectangle (farther than the
    # border weights reach), as if those were never painted: what is outside it must not
    # matter, while objects across its edge still shape the targets inside it.
    near = ndimage.binary_dilation(mask, iterations=32)
    far_objects = np.setdiff1d(np.unique(labels), np.unique(labels[near]))
    other_labels = np.where(np.isin(labels, far_objects), 0, labels)
    assert far_objects.size >= 10
    config = _config(epochs=1, steps_per_epoch=6, val_fraction=0, seed=3)
    runs = []
    for these_labels in (labels, other_labels):
        losses = []
        generator = train_iter([TrainingSample(image, these_labels, mask)], network_config=tiny_config,
                               config=config)
        result = run_to_end(generator, lambda progress, losses=losses: losses.append(progress.loss))
        runs.append((result.model.network.state_dict(), losses))
    (first, first_losses), (second, second_losses) = runs
    # What lies outside the rectangle, painted or not, changes nothing.
    assert all(torch.equal(first[key], second[key]) for key in first)
    # Every patch is drawn where something is annotated: none gives an empty loss.
    assert len(first_losses) == 6 and all(loss > 0 for loss in first_losses)
