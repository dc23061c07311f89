"""Training: sparse annotation, stopping, budgets, fine-tuning and bad input."""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core import train as train_module
from napari_unet.core.annotation import labelled_planes_mask, regions_mask
from napari_unet.core.bundle import Model
from napari_unet.core.errors import InputError, InputWarning
from napari_unet.core.metrics import average_precision
from napari_unet.core.model import NetworkConfig
from napari_unet.core.postprocess import SEPARATIONS, THRESHOLD_CHOICES
from napari_unet.core.predict import predict
from napari_unet.core.progress import run_to_end
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import (
    FINE_TUNE_LEARNING_RATE,
    GENTLE_FINE_TUNE_LEARNING_RATE,
    SCRATCH_LEARNING_RATE,
    TrainingConfig,
    TrainingResult,
    TrainingSample,
    _BatchesAhead,
    _clearly_better,
    _loss,
    _PatchSampler,
    _prepare_plane,
    _validation_split,
    train,
    train_iter,
    tune_threshold,
)

FAST = dict(epochs=1, steps_per_epoch=3, patch_size=32, batch_size=2, device="cpu", val_fraction=0.0)


def _weights(model: Model) -> dict:
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_unannotated_pixels_give_zero_loss_and_zero_gradient():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 2, 16, 16), generator=generator, requires_grad=True)
    target = torch.randint(0, 2, (2, 16, 16), generator=generator)
    weights = torch.rand((2, 16, 16), generator=generator) * 5
    mask = torch.zeros((2, 16, 16), dtype=torch.bool)
    mask[:, :8] = True

    for dice_weight in (0.0, 0.5):
        logits.grad = None
        _loss(logits, target, weights, mask, dice_weight).backward()
        assert torch.all(logits.grad[:, :, 8:] == 0), "unannotated pixels must not receive gradient"
        assert torch.any(logits.grad[:, :, :8] != 0)

    # Whatever the targets and weights say outside the annotation, the loss is the same.
    changed_target, changed_weights = target.clone(), weights.clone()
    changed_target[:, 8:] = 1 - changed_target[:, 8:]
    changed_weights[:, 8:] = 1000.0
    before = _loss(logits, target, weights, mask, 0.5)
    after = _loss(logits, changed_target, changed_weights, mask, 0.5)
    assert torch.equal(before, after)


def _dark_on_bright(pair):
    image, labels = pair
    return image.max() - image, labels


def test_training_raises_ap_well_above_the_untrained_model():
    train_data = [synthetic_nuclei((128, 128), count=14, seed=seed) for seed in range(6)]
    test_data = [synthetic_nuclei((128, 128), count=14, seed=100 + seed) for seed in range(3)]
    network = NetworkConfig(depth=2, base_width=8)

    def ap50(model, pairs=test_data):
        predictions = [predict(model, image, device="cpu").labels for image, _ in pairs]
        return average_precision([labels for _, labels in pairs], predictions, thresholds=(0.5,))["ap_pooled"][0]

    untrained = Model.new(network)
    config = TrainingConfig(
        epochs=6, steps_per_epoch=50, patch_size=64, batch_size=8,
        learning_rate=3e-3, device="cpu", val_fraction=0.2, seed=0,
    )
    result = train([TrainingSample(i, lab) for i, lab in train_data], network_config=network, config=config)
    before, after = ap50(untrained), ap50(result.model)
    assert after >= before + 0.3, (before, after)
    assert after >= 0.4

    # Fine-tuning the bright-on-dark model on dark-on-bright images makes it work on those.
    dark_train = [_dark_on_bright(pair) for pair in train_data]
    dark_test = [_dark_on_bright(pair) for pair in test_data]
    tuned = train([TrainingSample(i, lab) for i, lab in dark_train], model=result.model, config=config).model
    assert ap50(tuned, dark_test) >= 0.4
    assert result.history and all("ap50" in record for record in result.history)
    assert result.model.object_diameter is not None and 10 < result.model.object_diameter < 30


def test_stop_event_ends_training_and_keeps_the_given_model_untouched(nuclei, tiny_config):
    image, labels = nuclei
    start = Model.new(tiny_config)
    original = _weights(start)
    stop = threading.Event()
    config = TrainingConfig(**dict(FAST, epochs=1000, steps_per_epoch=2, val_fraction=0.2))
    generator = train_iter([TrainingSample(image, labels)], model=start, config=config, stop=stop)
    seen = []
    while True:
        try:
            progress = next(generator)
        except StopIteration as finished:
            result = finished.value
            break
        seen.append(progress)
        if progress.step == 5:
            stop.set()
    assert result.stop_reason == "stopped"
    assert seen[-1].step == 5
    assert result.model.training["steps"] == 5
    assert _same_weights(original, _weights(start)), "fine-tuning must work on a copy"
    assert not _same_weights(original, _weights(result.model))
    # The returned weights are those of the best validation, which is recorded.
    assert max(r["score"] for r in result.history) == seen[-1].best_score


def test_time_budget_and_early_stopping(nuclei, tiny_config):
    image, labels = nuclei
    samples = [TrainingSample(image, labels)]
    budget = train(samples, network_config=tiny_config, config=TrainingConfig(
        **dict(FAST, epochs=10**6, steps_per_epoch=10**6, val_fraction=0.3, max_minutes=0.02)))
    assert budget.stop_reason == "time budget"
    # The last step is validated, so the weights of the decayed learning rate can win.
    assert len(budget.history) == 1 and budget.history[0]["step"] == budget.model.training["steps"]
    assert "iou" in budget.history[0]
    patient = train(
        samples,
        network_config=tiny_config,
        config=TrainingConfig(**dict(FAST, epochs=10**6, steps_per_epoch=1, val_fraction=0.3, patience=2, learning_rate=1e-9)),
    )
    assert patient.stop_reason == "early stopping"


def test_fine_tuning_continues_the_history(nuclei, tiny_config):
    image, labels = nuclei
    samples = [TrainingSample(image, labels)]
    config = TrainingConfig(**dict(FAST, val_fraction=0.3))
    first = train(samples, network_config=tiny_config, config=config).model
    second = train(samples, model=first, config=config).model
    # The second run first validates the model it was given (its loss: none yet).
    assert [r["step"] for r in second.history] == [3, 3, 6]
    assert second.history[1]["loss"] is None and "iou" in second.history[1]
    assert second.training["steps"] == 3


@pytest.mark.parametrize("painted", [3, "all"])
def test_fine_tuning_warns_when_the_model_finds_many_objects_left_unpainted(painted, monkeypatch):
    from napari_unet.core.registry import load_model

    image, labels = synthetic_nuclei((256, 256), count=40, seed=0)
    objects = np.unique(labels)[1:]
    if painted != "all":  # a few nuclei painted, the rest left as background by mistake
        labels = np.where(np.isin(labels, objects[:painted]), labels, 0)
    seen = []
    real = train_module._starting_model_on_painted_planes
    monkeypatch.setattr(train_module, "_starting_model_on_painted_planes", lambda *args: seen.append(real(*args)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train([TrainingSample(image, labels, name="cells.tif")], model=load_model("nuclei"),
              config=TrainingConfig(**dict(FAST, patch_size=128, epochs=1, steps_per_epoch=1, val_fraction=0.0)))
    said = [str(warning.message) for warning in caught if "where nothing is painted" in str(warning.message)]
    assert len(seen) == 1  # the starting model looked once, before training
    if painted == "all":
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith("cells.tif: the starting model finds ")
        assert "against 3 painted" in said[0] and "regions" in said[0]


def test_fine_tuning_that_only_hurts_gives_the_model_back_unchanged(nuclei, tiny_config):
    image, labels = nuclei
    config = TrainingConfig(**dict(FAST, epochs=2))
    model = train([TrainingSample(image, labels)], network_config=tiny_config, config=config).model
    model.name, model.evaluation = "nuclei-like", {"ap50_pooled": 0.9}
    model.object_diameter = 30.0
    before = _weights(model)
    # Annotations of nuclei where there are none, validated against the real ones, with a
    # pixel size the model does not record.
    misplaced = np.roll(labels, (labels.shape[0] // 2, labels.shape[1] // 2), axis=(0, 1))
    misled = train([TrainingSample(image, misplaced)], model=model, config=replace(config, learning_rate=0.05),
                   validation_samples=[TrainingSample(image, labels)], pixel_size=(0.4, 0.4), pixel_unit="um")
    assert misled.history[0]["step"] == 0 and misled.history[-1]["iou"] < misled.history[0]["iou"]
    assert _same_weights(_weights(misled.model), before)
    # All of it unchanged, and said so: its name, figures and threshold still hold.
    assert misled.unchanged
    assert (misled.model.name, misled.model.evaluation, misled.model.threshold) == (
        "nuclei-like", {"ap50_pooled": 0.9}, model.threshold)
    # What rescales its predictions too: they must stay as they were.
    assert (misled.model.object_diameter, misled.model.pixel_size, misled.model.pixel_unit) == (30.0, None, "")
    assert misled.starting_score == misled.history[0]["score"] < 1.0
    assert f"than the starting model (score {misled.starting_score:.3f})" in misled.why_unchanged()


def test_a_starting_model_without_an_error_is_said_to_leave_nothing_to_gain(nuclei, tiny_config):
    result = TrainingResult(Model.new(tiny_config), [{"step": 0, "score": 1.0}, {"step": 5, "score": 0.9}],
                            "time budget", unchanged=True)
    assert "already segments the held-out annotations without an error" in result.why_unchanged()
    assert TrainingResult(Model.new(tiny_config), [{"step": 5, "score": 0.9}], "epochs").starting_score is None


@pytest.mark.parametrize(("errors", "objects", "replaces"), [
    (3, 40, True),  # two errors fewer
    (2, 40, False),  # one error fewer: within what 40 validation objects resolve
    (90, 1000, True), (88, 1000, False),  # 1 % of 1000 objects is 10 errors
])
def test_fine_tuned_weights_replace_the_given_model_only_when_clearly_better(errors, objects, replaces):
    candidate = {"errors": 1 if objects == 40 else 80, "objects": objects}
    given = {"errors": errors, "objects": objects}
    assert _clearly_better(candidate, given) == replaces
    assert _clearly_better(candidate, None)  # later candidates compete by score alone
    assert _clearly_better({"iou": 0.5}, given)  # no fully annotated plane: by pixel IoU


@pytest.mark.parametrize("freeze_norm", [None, False])
def test_fine_tuning_keeps_the_batch_norm_statistics_unless_told(nuclei, tiny_config, freeze_norm):
    image, labels = nuclei
    model = train([TrainingSample(image, labels)], network_config=tiny_config, config=TrainingConfig(**FAST)).model
    before = _weights(model)
    inverted = image.max() - image  # other statistics
    tuned = _weights(train([TrainingSample(inverted, labels)], model=model,
                           config=TrainingConfig(**dict(FAST, freeze_norm=freeze_norm))).model)
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    kept = _same_weights({k: before[k] for k in statistics}, {k: tuned[k] for k in statistics})
    assert statistics and kept == (freeze_norm is None)
    convolutions = [k for k in before if k.endswith("weight") and before[k].ndim == 4]
    assert not _same_weights({k: before[k] for k in convolutions}, {k: tuned[k] for k in convolutions})


def test_sparse_planes_and_regions(tiny_config):
    image, labels = synthetic_nuclei((64, 64), count=6, seed=3)
    stack = np.stack([image, image, image])
    stack_labels = np.stack([labels, np.zeros_like(labels), labels])
    mask = labelled_planes_mask(stack_labels)
    assert mask[0].all() and not mask[1].any()
    train([TrainingSample(stack, stack_labels, mask)], network_config=tiny_config, config=TrainingConfig(**FAST))
    region = regions_mask(labels.shape, [[[0, 0], [40, 40]]])
    train([TrainingSample(image, labels, region)], network_config=tiny_config, config=TrainingConfig(**FAST))


@pytest.mark.parametrize(
    "variant",
    [
        dict(optimizer="sgd", learning_rate=0.01),
        dict(dice_weight=1.0),
        dict(augment_strength=0.0),
    ],
)
def test_training_options(nuclei, tiny_config, variant):
    from napari_unet.core.augment import AugmentConfig

    image, labels = nuclei
    options = dict(FAST)
    if "augment_strength" in variant:
        options["augment"] = AugmentConfig(strength=variant.pop("augment_strength"))
    options.update(variant)
    result = train([TrainingSample(image, labels)], network_config=tiny_config, config=TrainingConfig(**options))
    assert result.model.training["steps"] == 3


@pytest.mark.parametrize("padding, classes", [("valid", 2), ("same", 3)])
def test_valid_padding_and_three_classes_train(nuclei, padding, classes):
    image, labels = nuclei
    network = NetworkConfig(depth=2, base_width=4, padding=padding, num_classes=classes)
    result = train([TrainingSample(image, labels)], network_config=network, config=TrainingConfig(**dict(FAST, patch_size=48)))
    assert result.model.config.padding == padding
    assert predict(result.model, image, device="cpu").labels.shape == image.shape


def test_validation_split_by_image_or_by_stripe(tiny_config):
    pairs = [synthetic_nuclei((64, 64), count=6, seed=s) for s in range(10)]
    many = train([TrainingSample(i, lab) for i, lab in pairs], network_config=tiny_config, config=TrainingConfig(**dict(FAST, val_fraction=0.2)))
    single = train([TrainingSample(*pairs[0])], network_config=tiny_config, config=TrainingConfig(**dict(FAST, val_fraction=0.25)))
    # With ten images, whole images are validated (AP is defined); with one, a stripe is.
    assert "ap50" in many.history[-1]
    assert "ap50" in single.history[-1]



@pytest.mark.parametrize("count, whole_plane, held_out_whole", [(5, False, 0), (5, True, 1), (3, True, 0), (10, True, 1)])
def test_fine_tuning_holds_out_a_whole_image_when_enough_remain(count, whole_plane, held_out_whole):
    planes = []
    for index in range(count):
        labels = np.zeros((32, 40), np.int32)
        labels[4:12, 30:38] = 1
        planes.append((f"image {index}", np.zeros((1, 32, 40), np.float32), labels, np.ones((32, 40), bool)))
    train_planes, validation = _validation_split(planes, 0.1, np.random.default_rng(0), whole_plane=whole_plane)
    whole = [plane for plane in validation if plane[2].shape == (32, 40)]
    assert len(whole) == held_out_whole
    if held_out_whole:
        # A plane is either trained on or validated, never both.
        assert {p[0] for p in train_planes}.isdisjoint(p[0] for p in validation)
        assert len(train_planes) + len(validation) == count
    else:  # a stripe of every image, removed from what it trains on
        assert len(validation) == count and all(plane[2].shape == (32, 4) for plane in validation)
        assert not any(mask[:, 36:].any() for _, _, _, mask in train_planes)


def test_a_validation_fraction_near_one_still_leaves_a_whole_image_to_train_on():
    planes = [(f"image {index}", np.zeros((1, 32, 40), np.float32), np.ones((32, 40), np.int32),
               np.ones((32, 40), bool)) for index in range(6)]
    train_planes, validation = _validation_split(planes, 0.99, np.random.default_rng(0))
    # Whole images, one left to train on: not a stripe of 1 % of every image, too narrow to train on.
    assert len(train_planes) == 1 and len(validation) == 5
    assert all(plane[2].shape == (32, 40) for plane in train_planes + validation)


@pytest.mark.parametrize("model", [None, "given"])
def test_no_annotation_left_to_validate_on_is_said(tiny_config, model):
    image, labels = synthetic_nuclei((48, 48), count=2, seed=0)
    image, labels = image[:, :16], labels[:, :16]  # too narrow to hold out a stripe of
    given = Model.new(tiny_config) if model else None
    with pytest.warns(InputWarning, match="no annotation is left to validate on") as caught:
        result = train([TrainingSample(image, labels)], model=given, network_config=tiny_config,
                       config=TrainingConfig(**dict(FAST, val_fraction=0.1)))
    said = " ".join(str(warning.message) for warning in caught)
    assert ("replace the starting model" if model else "last weights are kept") in said
    assert result.model.training["steps"] == 3 and not any("score" in entry for entry in result.history)


@pytest.mark.parametrize(
    ("start_from_a_model", "images", "separate_validation", "expected"),
    [
        (False, 2, False, SCRATCH_LEARNING_RATE),
        (True, 4, False, FINE_TUNE_LEARNING_RATE),  # one image held out whole
        (True, 2, False, GENTLE_FINE_TUNE_LEARNING_RATE),  # only stripes of the training images
        (True, 2, True, FINE_TUNE_LEARNING_RATE),  # images of their own to validate on
    ],
)
def test_without_a_learning_rate_the_step_suits_what_validation_can_see(
        tiny_config, start_from_a_model, images, separate_validation, expected):
    samples = [TrainingSample(*synthetic_nuclei((64, 64), count=6, seed=seed)) for seed in range(images)]
    validation = [TrainingSample(*synthetic_nuclei((64, 64), count=6, seed=9))] if separate_validation else None
    config = TrainingConfig(**{**FAST, "val_fraction": 0.1})
    assert config.learning_rate is None
    result = train(samples, model=Model.new(tiny_config) if start_from_a_model else None, network_config=tiny_config,
                   config=config, validation_samples=validation)
    assert result.model.training["learning_rate"] == expected  # the step used, recorded
    given = train(samples, network_config=tiny_config, config=TrainingConfig(**{**FAST, "learning_rate": 0.02}))
    assert given.model.training["learning_rate"] == 0.02


def test_a_starting_model_that_already_finds_the_painted_objects_is_fine_tuned_gently():
    from napari_unet.core.registry import load_model

    # Four images: one is held out whole, which alone would take the bolder step.
    samples = [TrainingSample(*synthetic_nuclei((128, 128), count=12, seed=seed)) for seed in range(4)]
    result = train(samples, model=load_model("nuclei"), config=TrainingConfig(**dict(FAST, patch_size=64, val_fraction=0.1)))
    assert result.model.training["learning_rate"] == GENTLE_FINE_TUNE_LEARNING_RATE


@pytest.mark.parametrize(
    "labels_dtype", [bool, np.int64, np.float64, np.uint8]
)
def test_label_dtypes(labels_dtype, tiny_config):
    image, labels = synthetic_nuclei((64, 64), count=6, seed=5)
    labels = (labels > 0) if labels_dtype is bool else labels.astype(labels_dtype)
    result = train([TrainingSample(image, labels)], network_config=tiny_config, config=TrainingConfig(**FAST))
    assert result.model.training["steps"] == 3


def test_labels_without_an_object_are_refused_and_a_single_object_trains(tiny_config):
    image, labels = synthetic_nuclei((64, 64), count=6, seed=5)
    with pytest.raises(InputError, match="the annotations contain no object: paint at least one"):
        train([TrainingSample(image, np.zeros_like(labels))], network_config=tiny_config,
              config=TrainingConfig(**FAST))
    single = np.zeros_like(labels)
    single[20:30, 20:30] = 1
    train([TrainingSample(image, single)], network_config=tiny_config, config=TrainingConfig(**FAST))


def test_images_smaller_than_the_patch_are_padded(tiny_config):
    image, labels = synthetic_nuclei((64, 64), count=6, seed=5)
    small_labels = labels[:20, :30].copy()
    small_labels[5:12, 5:12] = small_labels.max() + 1  # an object in the corner, whatever the generator put there
    result = train(
        [TrainingSample(image[:20, :30], small_labels)],
        network_config=tiny_config,
        config=TrainingConfig(**dict(FAST, patch_size=64)),
    )
    assert result.model.training["steps"] == 3


def test_rgb_images_train_a_one_channel_model_with_a_warning(tiny_config):
    image, labels = synthetic_nuclei((64, 64), count=6, seed=5, dtype=np.uint8)
    rgb = np.stack([image, image // 2, image], axis=-1)
    with pytest.warns(InputWarning, match="gray"):
        train([TrainingSample(rgb, labels)], network_config=tiny_config, config=TrainingConfig(**FAST))


def test_bad_training_input_gives_clear_errors(tiny_config):
    image, labels = synthetic_nuclei((64, 64), count=6, seed=5)
    with pytest.raises(InputError, match="do not match"):
        train([TrainingSample(image, labels[:32])], network_config=tiny_config, config=TrainingConfig(**FAST))
    with pytest.raises(InputError, match="nothing is annotated"):
        train([TrainingSample(image, labels, np.zeros(labels.shape, bool))], network_config=tiny_config,
              config=TrainingConfig(**FAST))
    with pytest.raises(InputError, match="channels"):
        train([TrainingSample(np.stack([image] * 2), labels)], network_config=NetworkConfig(in_channels=3, depth=2, base_width=4),
              config=TrainingConfig(**FAST))
    with pytest.raises(InputError):
        TrainingConfig(optimizer="rmsprop")
    with pytest.raises(InputError):
        TrainingConfig(max_minutes=0)


def test_checkpoint_file_holds_the_best_model_during_training(nuclei, tiny_config, tmp_path):
    from napari_unet.core.modelfile import load_model_file

    image, labels = nuclei
    checkpoint = tmp_path / "run.safetensors"
    generator = train_iter([TrainingSample(image, labels)], network_config=tiny_config,
                           config=TrainingConfig(**dict(FAST, epochs=3, steps_per_epoch=2, val_fraction=0.3)),
                           checkpoint=checkpoint)
    first = next(generator)
    assert first.step == 1 and not checkpoint.exists()
    next(generator)  # the first validation writes the checkpoint
    saved = load_model_file(checkpoint)
    assert [r["step"] for r in saved.history] == [2]
    assert saved.training["steps"] == 2
    result = run_to_end(generator)
    best = max((h["score"], h["iou"]) for h in result.history)
    best_steps = [r["step"] for r in result.history if (r["score"], r["iou"]) == best]
    assert load_model_file(checkpoint).training["steps"] == best_steps[-1]  # on a tie, the later


def test_regions_outside_the_validation_stripe_train_without_validating(tiny_config):
    image, labels = synthetic_nuclei((64, 64), count=6, seed=5)
    left = regions_mask(labels.shape, [[[0, 0], [64, 30]]])
    result = train([TrainingSample(image, labels, left)], network_config=tiny_config,
                   config=TrainingConfig(**dict(FAST, val_fraction=0.1)))
    # Nothing annotated in the held-out stripe: no made-up perfect validation scores.
    assert all("score" not in record for record in result.history)


def _disks(diameter: float, count: int, seed: int) -> TrainingSample:
    """An image of ``count`` separate bright disks of one diameter, and their labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros((160, 160), np.int32)
    spacing = 160 // 4
    for index in range(count):
        row, col = divmod(index, 4)
        labels[disk((spacing * row + spacing // 2, spacing * col + spacing // 2), diameter / 2, shape=labels.shape)] = index + 1
    image = (labels > 0) * 200.0 + rng.normal(20, 5, labels.shape)
    return TrainingSample(image.astype(np.float32), labels)


def test_explicit_validation_images_are_used_and_no_training_image_is_held_out(tiny_config):
    small, large = _disks(10, 8, seed=0), _disks(30, 8, seed=1)
    config = TrainingConfig(**{**FAST, "val_fraction": 0.5, "steps_per_epoch": 2})
    result = train([small, large], config=config, network_config=tiny_config,
                   validation_samples=[_disks(20, 8, seed=2)])
    # Both training images count for the object size (one alone would give 10 or 30).
    assert result.model.object_diameter == pytest.approx(20, abs=2)
    assert result.history and "iou" in result.history[-1]


def test_training_ends_with_the_threshold_that_segments_the_validation_images_best(tiny_config):
    # Enough validation objects (over 200) for the threshold to be chosen.
    pairs = [synthetic_nuclei((256, 256), count=70, seed=seed) for seed in (40, 41, 43, 44)]
    validation = [TrainingSample(image, labels) for image, labels in pairs]
    config = TrainingConfig(**{**FAST, "epochs": 2, "steps_per_epoch": 10, "learning_rate": 3e-3})
    model = train([TrainingSample(*synthetic_nuclei((96, 96), count=12, seed=42))], network_config=tiny_config,
                  config=config, validation_samples=validation).model

    def ap50(threshold, separation):
        chosen = model.separation
        model.separation = separation
        predictions = [predict(model, image, threshold=threshold, device="cpu").labels for image, _ in pairs]
        model.separation = chosen
        return average_precision([labels for _, labels in pairs], predictions, thresholds=(0.5,))["ap_mean"][0]

    # What it chose among: every threshold with every separation.
    scores = {(threshold, separation): ap50(threshold, separation)
              for threshold in (0.5, *THRESHOLD_CHOICES[model.config.num_classes]) for separation in SEPARATIONS}
    assert (model.threshold, model.separation) in scores
    assert scores[model.threshold, model.separation] == max(scores.values()), scores
    # Choosing them again, for a model trained elsewhere, finds the same.
    chosen = model.threshold, model.separation
    model.threshold, model.separation = 0.5, "seeds"
    assert tune_threshold(model, validation, device="cpu") == chosen[0]
    assert (model.threshold, model.separation) == chosen


def test_cosine_schedule_decays_by_steps_or_time_whichever_is_further():
    from napari_unet.core.train import _set_learning_rate

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rates = {}
    for fraction in (0.0, 0.5, 1.0):
        _set_learning_rate(optimizer, TrainingConfig(learning_rate=0.01, schedule="cosine"), fraction, 0.0)
        rates[fraction] = optimizer.param_groups[0]["lr"]
    assert rates[0.0] == pytest.approx(0.01)
    assert rates[0.5] == pytest.approx(0.01 * (0.05 + 0.95 * 0.5))
    assert rates[1.0] == pytest.approx(0.01 * 0.05)  # never quite zero
    # Half of a 2-minute budget spent after 10% of the steps: time decides.
    _set_learning_rate(optimizer, TrainingConfig(learning_rate=0.01, schedule="cosine", max_minutes=2.0), 0.1, 60.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(rates[0.5])


def test_out_of_memory_halves_the_batch_with_a_warning(nuclei, tiny_config, monkeypatch):
    image, labels = nuclei
    model = Model.new(tiny_config)
    forward, sizes = model.network.forward, []

    def fits_two(x):
        if torch.is_grad_enabled():  # training steps (not the predictions before training)
            sizes.append(len(x))
            if len(x) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return forward(x)

    monkeypatch.setattr(model.network, "forward", fits_two)
    with pytest.warns(InputWarning, match="going on with 2"):
        result = train([TrainingSample(image, labels)], model=model, config=TrainingConfig(**dict(FAST, batch_size=4)))
    assert sizes[:2] == [4, 2] and result.model.training["steps"] == 3
    assert result.model.training["batch_size"] == 2


def test_out_of_memory_with_one_patch_says_to_choose_smaller_patches(nuclei, tiny_config, monkeypatch):
    image, labels = nuclei
    model = Model.new(tiny_config)

    forward = model.network.forward

    def never_fits(x):
        if torch.is_grad_enabled():  # a training step (predictions before training take less)
            raise torch.OutOfMemoryError("CUDA out of memory")
        return forward(x)

    monkeypatch.setattr(model.network, "forward", never_fits)
    with pytest.raises(InputError, match="smaller patch size"):
        train([TrainingSample(image, labels)], model=model, config=TrainingConfig(**dict(FAST, batch_size=1)))


def test_fine_tuning_converts_the_images_pixel_size_to_the_models_unit(nuclei, tiny_config, monkeypatch):
    import napari_unet.core.train as core_train

    image, labels = nuclei
    model = Model.new(tiny_config, pixel_size=(0.008, 0.008), pixel_unit="um", object_diameter=12.0)
    factors = []
    real = core_train.scale_factor
    monkeypatch.setattr(core_train, "scale_factor",
                        lambda *args: factors.append(real(*args)) or factors[-1])
    config = TrainingConfig(**FAST)
    result = train([TrainingSample(image, labels)], model=model, config=config, pixel_size=(4.0, 4.0), pixel_unit="nm")
    # 4 nm pixels are half the model's 8 nm: the images are halved, as prediction would.
    assert factors == [0.5] and result.model.pixel_size == (0.008, 0.008) and result.model.pixel_unit == "um"
    with pytest.raises(InputError, match="give the objects' diameter"):
        train([TrainingSample(image, labels)], model=model, config=config, pixel_size=(4.0, 4.0), pixel_unit="s")


def _patch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("napari-unet-patches")]


def test_batches_drawn_ahead_are_the_samplers_own_in_its_order(nuclei, tiny_config):
    image, labels = nuclei
    model, config = Model.new(tiny_config), TrainingConfig(**FAST)
    plane = _prepare_plane(model, config, image[None].astype(np.float32), labels, np.ones(labels.shape, bool), 48)
    direct = _PatchSampler([plane], 48, np.random.default_rng(3))
    ahead = _BatchesAhead(_PatchSampler([plane], 48, np.random.default_rng(3)))
    try:
        for expected in (direct(4), direct(4)):
            for part, drawn in zip(expected, ahead(4)):
                np.testing.assert_array_equal(part, drawn)
        # Drawn at 4 before the batch size was halved: cut to 2.
        expected = direct(4)
        drawn = ahead(2)
        assert all(len(part) == 2 for part in drawn)
        np.testing.assert_array_equal(expected[0][:2], drawn[0])
        assert _patch_threads()
    finally:
        ahead.close()
    assert not _patch_threads()


def test_training_leaves_no_thread_behind_when_done_or_closed(nuclei, tiny_config):
    image, labels = nuclei
    train([TrainingSample(image, labels)], model=Model.new(tiny_config), config=TrainingConfig(**FAST))
    assert not _patch_threads()
    generator = train_iter([TrainingSample(image, labels)], model=Model.new(tiny_config), config=TrainingConfig(**FAST))
    next(generator)
    generator.close()
    assert not _patch_threads()


def test_a_diverging_training_stops_with_a_plain_error(nuclei, tiny_config, monkeypatch):
    from napari_unet.core import train as core_train

    image, labels = nuclei
    real = core_train._loss
    monkeypatch.setattr(core_train, "_loss", lambda *args: real(*args) * float("nan"))
    with pytest.raises(FloatingPointError, match="diverged"):
        train([TrainingSample(image, labels)], model=Model.new(tiny_config), config=TrainingConfig(**FAST))
    assert not _patch_threads()


@pytest.mark.usefixtures("one_torch_thread")
def test_the_same_seed_trains_the_same_weights(nuclei, tiny_config):
    image, labels = nuclei

    def trained(seed: int) -> dict:
        torch.manual_seed(0)  # the same initial weights
        model = Model.new(tiny_config)
        return _weights(train([TrainingSample(image, labels)], model=model,
                              config=TrainingConfig(**dict(FAST, seed=seed))).model)

    first = trained(seed=0)
    assert _same_weights(first, trained(seed=0))
    assert not _same_weights(first, trained(seed=1))


@pytest.mark.parametrize(("setting", "said"), [
    ({"epochs": 0}, "epochs must be at least 1, not 0"),
    ({"batch_size": 0}, "batch size must be at least 1, not 0"),
    ({"patch_size": 4}, "patch size must be from 8 to 2048, not 4"),
])
def test_each_bad_setting_is_named_with_its_value(setting, said):
    with pytest.raises(InputError, match=said):
        TrainingConfig(**setting)


def test_fine_tuning_with_nothing_left_to_validate_on_warns(nuclei, tiny_config):
    image, labels = nuclei
    mask = np.zeros(labels.shape, bool)
    mask[:, :60] = True  # a rectangle on the left: the held-out right-most tenth holds no annotation
    with pytest.warns(InputWarning, match="cannot check that the model gets better"):
        train([TrainingSample(image, labels, mask)], model=Model.new(tiny_config),
              config=TrainingConfig(**dict(FAST, val_fraction=0.1)))


def test_the_unlabelled_planes_of_a_stack_are_ignored_unless_a_mask_says_otherwise(tiny_config):
    from napari_unet.core.train import _split_planes

    pairs = [synthetic_nuclei((64, 64), count=6, seed=seed) for seed in range(3)]
    image = np.stack([image for image, _ in pairs])
    labels = np.stack([labels for _, labels in pairs])
    labels[1] = 0  # plane 1 not annotated: its nuclei must not be taught as background
    model = Model.new(tiny_config)
    planes = list(_split_planes([TrainingSample(image, labels)], model))
    assert len(planes) == 2 and all(mask.all() for *_, mask in planes)
    everything = list(_split_planes([TrainingSample(image, labels, np.ones(labels.shape, bool))], model))
    assert len(everything) == 3
    single = list(_split_planes([TrainingSample(image[1], labels[1])], model))  # a 2D image counts whole
    assert len(single) == 1 and single[0][3].all()


def test_a_checkpoint_that_is_not_a_model_files_name_is_refused_before_training(nuclei, tiny_config, tmp_path):
    image, labels = nuclei
    for wrong in (tmp_path / "labels.tif", tmp_path):
        with pytest.raises(InputError, match="checkpoint is a model file"):
            train([TrainingSample(image, labels)], network_config=tiny_config, config=TrainingConfig(**FAST),
                  checkpoint=wrong)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("amp", [True, False])
def test_a_cpu_with_amx_trains_and_validates_in_bfloat16_unless_told(nuclei, tiny_config, cpu_with_amx, amp,
                                                                     inference_dtypes):
    image, labels = nuclei
    model = Model.new(tiny_config)
    steps = []

    def note_step(module, inputs, output):
        if module.training:
            steps.append(output.dtype)

    model.network.head.register_forward_hook(note_step)
    config = TrainingConfig(**dict(FAST, val_fraction=0.2, amp=amp))
    result = train([TrainingSample(image, labels)], model=model, config=config)
    expected = torch.bfloat16 if amp else torch.float32
    assert set(steps) == {expected} and inference_dtypes and set(inference_dtypes) == {expected}
    assert all(tensor.dtype == torch.float32 for tensor in result.model.network.state_dict().values()
               if tensor.is_floating_point())
    losses = [record["loss"] for record in result.history if record.get("loss") is not None]
    assert losses and all(np.isfinite(losses))


def test_a_cpu_trains_on_channels_last_maps_and_gives_the_weights_back_in_the_usual_layout(nuclei, tiny_config):
    image, labels = nuclei
    model = Model.new(tiny_config)
    layouts = []

    def note_layout(module, inputs, output):
        if module.training:
            layouts.append(output.is_contiguous(memory_format=torch.channels_last))

    model.network.down[1].register_forward_hook(note_layout)  # a map of several channels
    result = train([TrainingSample(image, labels)], model=model, config=TrainingConfig(**FAST))
    assert layouts and all(layouts)
    assert all(tensor.is_contiguous() for tensor in result.model.network.state_dict().values())


def test_training_planes_are_scaled_by_their_samples_intensity_range_or_else_the_models_normalization(tiny_config):
    from napari_unet.core.train import _split_planes

    image, labels = synthetic_nuclei((64, 64), count=6, seed=2)
    stack = np.stack([image, image // 4]).astype(np.uint16)  # a dim second plane, as at the end of a z-stack
    stack_labels = np.stack([labels, labels])
    model, brightest = Model.new(tiny_config), float(stack.max())
    ranged = [plane.pixels() for _, plane, _, _ in _split_planes(
        [TrainingSample(stack, stack_labels, intensity_range=(0, brightest))], model)]
    for plane, raw in zip(ranged, stack):
        np.testing.assert_allclose(plane[0], raw / brightest, atol=1e-6)
    own = [plane.pixels() for _, plane, _, _ in _split_planes([TrainingSample(stack, stack_labels)], model)]
    for plane, raw in zip(own, stack):
        np.testing.assert_allclose(plane, model.normalization(raw[None]), atol=1e-6)
    assert ranged[1].max() <= 0.25 and own[1].max() > 0.9  # the range keeps the dim plane dim


def test_validation_images_are_scaled_by_their_intensity_range(nuclei, tiny_config, monkeypatch):
    import napari_unet.core.train as training

    seen = []
    predict_probabilities = training.predict_probabilities

    def noting_the_input(network, image, *args):
        seen.append(image.copy())
        return predict_probabilities(network, image, *args)

    monkeypatch.setattr(training, "predict_probabilities", noting_the_input)
    image, labels = synthetic_nuclei((96, 96), count=8, seed=3)
    train([TrainingSample(*nuclei)], network_config=tiny_config, config=TrainingConfig(**FAST),
          validation_samples=[TrainingSample(image, labels, intensity_range=(0, 1000))])
    assert seen
    for validated in seen:
        np.testing.assert_allclose(validated[0], image / 1000, atol=1e-6)


def test_a_wrong_intensity_range_is_refused_before_training(nuclei, tiny_config):
    with pytest.raises(InputError, match="the lower first"):
        train([TrainingSample(*nuclei, intensity_range=(200, 10))], network_config=tiny_config,
              config=TrainingConfig(**FAST))


def test_training_patches_are_cut_from_planes_scaled_by_the_range_and_the_model_records_it(
        nuclei, tiny_config, monkeypatch, tmp_path):
    import napari_unet.core.train as training
    from napari_unet.core.modelfile import load_model_file

    prepared = []
    prepare_plane = training._prepare_plane

    def noting_the_plane(*args):
        prepared.append(prepare_plane(*args))
        return prepared[-1]

    monkeypatch.setattr(training, "_prepare_plane", noting_the_plane)
    image, labels = nuclei
    brightest = 2.0 * float(image.max())
    result = train([TrainingSample(image, labels, intensity_range=(0, brightest)), TrainingSample(image, labels)],
                   network_config=tiny_config, config=TrainingConfig(**FAST))
    ranged, own = prepared
    np.testing.assert_allclose(ranged.image[(0, *ranged.region)], image / brightest, atol=1e-6)
    np.testing.assert_allclose(own.image[(0, *own.region)], Model.new(tiny_config).normalization(image[None])[0],
                               atol=1e-6)
    assert result.model.training["intensity_ranges"] == [[0.0, brightest], None]
    assert load_model_file(result.model.save(tmp_path / "m.safetensors")).training["intensity_ranges"] == [
        [0.0, brightest], None]
    plain = train([TrainingSample(image, labels)], network_config=tiny_config, config=TrainingConfig(**FAST))
    assert plain.model.training["intensity_ranges"] == []


def test_stripes_are_cut_from_planes_normalized_whole_and_held_out_planes_wait_to_be_normalized(tiny_config):
    from napari_unet.core.train import _split_planes, _Unnormalized

    model, rng = Model.new(tiny_config), np.random.default_rng(0)
    image, labels = synthetic_nuclei((64, 128), count=8, seed=4)
    image[:, 100:] //= 4  # a dim right side: its own percentiles would stretch it
    _, validation = _validation_split(list(_split_planes([TrainingSample(image, labels)], model)), 0.2, rng)
    (_, stripe, _, _), = validation
    whole = model.normalization(image[None])
    np.testing.assert_allclose(stripe, whole[..., 128 - stripe.shape[-1]:], atol=1e-6)
    stack = np.stack([synthetic_nuclei((48, 48), count=4, seed=seed)[0] for seed in range(5)])
    stack_labels = np.stack([synthetic_nuclei((48, 48), count=4, seed=seed)[1] for seed in range(5)])
    _, held_out = _validation_split(list(_split_planes([TrainingSample(stack, stack_labels)], model)), 0.2, rng)
    assert len(held_out) == 1 and isinstance(held_out[0][1], _Unnormalized)  # no float32 copy kept between validations


def test_validation_counted_plane_by_plane_scores_as_all_planes_together(tiny_config):
    from napari_unet.core.metrics import pixel_scores
    from napari_unet.core.postprocess import probabilities_to_labels
    from napari_unet.core.train import _network_outputs, _split_planes, validate

    model = Model.new(NetworkConfig(depth=2, base_width=4, num_classes=3), threshold=0.3)
    pairs = [synthetic_nuclei((64, 64), count=6, seed=seed) for seed in range(3)]
    planes = list(_split_planes([TrainingSample(image, labels) for image, labels in pairs], model))
    planes[2] = (*planes[2][:3], np.pad(np.ones((64, 40), bool), ((0, 0), (0, 24))))  # partly annotated
    result = validate(model, planes, torch.device("cpu"), amp=False)
    outputs = list(_network_outputs(model, planes, torch.device("cpu"), False))
    predicted = [probabilities_to_labels(p, model.threshold, gap=model.gap) for p, _, _ in outputs]
    pixels = pixel_scores(np.concatenate([p[m] for p, (_, _, m) in zip(predicted, outputs)]),
                          np.concatenate([t[m] for _, t, m in outputs]))
    instances = average_precision([t for _, t, _ in outputs[:2]], predicted[:2], thresholds=(0.5,))
    assert result == pytest.approx({
        "iou": pixels["iou"], "f1": pixels["f1"], "ap50": instances["ap_mean"][0], "score": instances["ap_mean"][0],
        "objects": instances["tp"][0] + instances["fn"][0], "errors": instances["fp"][0] + instances["fn"][0]})


def test_a_model_fine_tuned_at_a_given_diameter_keeps_its_object_size(tiny_config):
    # The objects painted are 12 pixels wide, as a z-stack's planes cut its 24-pixel nuclei off their middle.
    model = Model.new(tiny_config, object_diameter=20.0)
    config = TrainingConfig(**FAST)
    told = train([_disks(12, 8, seed=0)], model=model, config=config, diameter=24.0)
    # Predictions told 24 pixels bring the objects to the model's 20, as training did.
    assert not told.unchanged and told.model.object_diameter == 20.0
    measured = train([_disks(12, 8, seed=0)], model=model, config=config)
    assert not measured.unchanged and measured.model.object_diameter == pytest.approx(12, abs=1.5)  # as painted
