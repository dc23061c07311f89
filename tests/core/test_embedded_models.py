"""The models shipped inside the package: present, small, self-describing, and good at their job."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet._sample_data import sample_nuclei
from napari_unet.core.errors import ImageWarning
from napari_unet.core.metrics import average_precision, isbi_scores
from napari_unet.core.predict import estimate_diameter, predict
from napari_unet.core.registry import _EMBEDDED, embedded_models, load_model
from napari_unet.core.scale import equivalent_diameters, resize_labels, resize_plane

SHIPPED = ("nuclei", "nuclei-he", "cells", "em-neurites")
#: The issue's limit on a shipped weight file.
MAX_BYTES = 20 * 1024**2
#: Floors well under what the shipped models score on the held-out images of these tests
#: (0.70 on 4 H&E images, 0.76 on set1.tif): far under them is a broken model.
H_AND_E_AP50 = 0.55
CELLS_AP50 = 0.6


@pytest.fixture(scope="module")
def nuclei():
    return load_model("nuclei")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_small_and_describes_itself(name):
    metadata = embedded_models()[name]
    assert (_EMBEDDED / f"{name}.safetensors").stat().st_size <= MAX_BYTES
    assert metadata["name"] == name
    assert metadata["description"] and metadata["training_data"]
    assert metadata["object_diameter"] > 0
    evaluation = metadata["evaluation"]
    assert {"ap50_pooled", "ap75_pooled", "mean_ap_0.5_0.95"} <= set(evaluation)
    if name == "em-neurites":
        assert {"pixel_error", "v_rand"} <= set(evaluation)
        assert metadata["pixel_size"] is not None


def test_models_load_without_network_access(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loading a model must not touch the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in SHIPPED:
        assert load_model(name).name == name


@pytest.mark.usefixtures("one_torch_thread")
def test_nuclei_segments_the_napari_sample_data(nuclei):
    (image, _, _), (labels, _, _) = sample_nuclei()
    prediction = predict(nuclei, image, device="cpu")
    ap50 = average_precision([labels], [prediction.labels])["ap_pooled"][0]
    assert ap50 > 0.8  # measured 0.98 (88 of 90 nuclei, none false), at the model's threshold and at 0.5


@pytest.mark.usefixtures("one_torch_thread")
def test_one_intensity_range_keeps_an_empty_field_empty(nuclei):
    from scipy import ndimage

    # Smooth noise (haze, an out-of-focus plane) stretched to full contrast by the plane's
    # own percentiles looks like nuclei to the model; within the range of the stack it
    # belongs to (here: nuclei up to 1000) it stays what it is, a dark field.
    field = ndimage.gaussian_filter(np.random.default_rng(0).normal(100, 5, (256, 256)), 2).astype(np.uint16)
    assert predict(nuclei, field, device="cpu").labels.max() > 50  # measured 335
    assert predict(nuclei, field, device="cpu", intensity_range=(90, 1000)).labels.max() == 0
    # A range equal to the plane's own percentiles is the model's normalization.
    (image, _, _), _ = sample_nuclei()
    percentiles = np.percentile(image, [nuclei.normalization.low_percentile, nuclei.normalization.high_percentile])
    np.testing.assert_array_equal(predict(nuclei, image, device="cpu", intensity_range=percentiles).labels,
                                  predict(nuclei, image, device="cpu").labels)


@pytest.mark.usefixtures("one_torch_thread")
def test_nuclei_finds_nuclei_four_times_larger_when_given_the_diameter(nuclei, shared_data):
    # The model tolerates about twice its training size by itself; at four times the
    # diameter (given, or estimated) is what brings the objects back.
    factor, crop = 4, 160
    names = (Path(__file__).parents[2] / "scripts" / "splits" / "dsb2018-validation.txt").read_text().split()
    truths, large_truths = [], []
    original, given, estimated, unscaled = [], [], [], []
    for name in names[:6]:  # held out from training
        image = tifffile.imread(shared_data / "dsb2018" / "images" / name)[:crop, :crop]
        labels = tifffile.imread(shared_data / "dsb2018" / "labels" / name)[:crop, :crop]
        large_image = resize_plane(image[None].astype(np.float32), (crop * factor,) * 2)[0]
        diameter = factor * float(np.median(equivalent_diameters(labels)))
        truths.append(labels)
        large_truths.append(resize_labels(labels, (crop * factor,) * 2))
        original.append(predict(nuclei, image, device="cpu").labels)
        given.append(predict(nuclei, large_image, diameter=diameter, device="cpu").labels)
        estimated.append(predict(nuclei, large_image, diameter="auto", device="cpu").labels)
        unscaled.append(predict(nuclei, large_image, device="cpu").labels)

    def ap50(predictions, truths):
        return average_precision(truths, predictions)["ap_pooled"][0]

    # Measured: original 0.84, given 0.78, estimated 0.80, unscaled 0.41 (the 4x images
    # are interpolated, so somewhat blurred, and hold 79 objects: one is 0.01). Unscaled,
    # larger nuclei break into fragments of the model's size; the estimate must not take
    # those fragments for the objects (a single check of the half-scale estimate did, on
    # a crop of 74-pixel nuclei: estimated 0.48).
    assert ap50(original, truths) > 0.7
    assert ap50(given, large_truths) >= 0.7
    assert ap50(estimated, large_truths) >= 0.7
    assert ap50(unscaled, large_truths) < ap50(given, large_truths) - 0.04


@pytest.mark.usefixtures("cpu_with_amx")
def test_nuclei_in_bfloat16_finds_the_nuclei_it_finds_in_float32(nuclei, shared_data):
    # What mixed precision does on a CPU with AMX (emulated, slowly, on AVX-512 CPUs without it).
    names = (Path(__file__).parents[2] / "scripts" / "splits" / "dsb2018-validation.txt").read_text().split()
    truths, exact, mixed = [], [], []
    for name in names[:12]:  # held out from training
        image = tifffile.imread(shared_data / "dsb2018" / "images" / name)
        truths.append(tifffile.imread(shared_data / "dsb2018" / "labels" / name))
        exact.append(predict(nuclei, image, device="cpu", amp=False).labels)
        mixed.append(predict(nuclei, image, device="cpu").labels)

    def ap50(predictions):
        return average_precision(truths, predictions)["ap_pooled"][0]

    # Measured on all 80 validation images: AP50 0.8807 in float32, 0.8805 in bfloat16.
    assert ap50(exact) > 0.8
    assert abs(ap50(mixed) - ap50(exact)) <= 0.01
    assert sum(np.array_equal(a, b) for a, b in zip(exact, mixed)) < len(names[:12])  # bfloat16 did run


@pytest.mark.usefixtures("one_torch_thread")
def test_em_neurites_on_held_out_isbi_slices(shared_data):
    from scipy import ndimage

    model = load_model("em-neurites")
    volume = tifffile.imread(shared_data / "isbi2012" / "volume.tif")[19]
    truth = ndimage.label(tifffile.imread(shared_data / "isbi2012" / "labels.tif")[19] > 0)[0]
    prediction = predict(model, volume, device="cpu")
    scores = isbi_scores(truth, prediction.labels)
    # Far from the paper's figures this would be a broken model, not a slightly worse one.
    assert scores["pixel_error"] < 0.15 and scores["v_rand"] > 0.7


def test_nuclei_is_offered_first():
    # The widgets' model choice defaults to the first embedded model.
    assert next(iter(embedded_models())) == "nuclei"


SPLITS = Path(__file__).resolve().parents[2] / "scripts" / "splits"


def _held_out(shared_data, dataset: str, listing: str, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``count`` images of a model's validation split, which it never trained on, with labels."""
    names = (SPLITS / listing).read_text().split()[:count]
    return [(tifffile.imread(shared_data / dataset / "images" / name),
             tifffile.imread(shared_data / dataset / "labels" / name)) for name in names]


def test_nuclei_hands_stained_tissue_to_nuclei_he():
    model = load_model("nuclei")
    assert model.colour_model.name == "nuclei-he"
    assert model.colour_model.normalization.colour == "haematoxylin"
    assert model.for_image(np.zeros((64, 64, 3), np.uint8)) is model.colour_model
    assert model.for_image(np.zeros((64, 64), np.uint8)) is model
    # Addressed by its own name, or by a path, a model is one network.
    assert load_model("nuclei-he").colour_model is None
    assert load_model(_EMBEDDED / "nuclei.safetensors").colour_model is None


@pytest.mark.usefixtures("one_torch_thread")
def test_nuclei_segments_held_out_h_and_e_tissue(shared_data):
    pairs = _held_out(shared_data, "dsb2018_color", "dsb2018-color-validation.txt", 4)
    model = load_model("nuclei")
    predictions = [predict(model, image, device="cpu").labels for image, _ in pairs]
    ap50 = average_precision([labels for _, labels in pairs], predictions)["ap_pooled"][0]
    assert ap50 > H_AND_E_AP50


@pytest.mark.usefixtures("one_torch_thread")
def test_cells_segments_held_out_phase_contrast(shared_data):
    (image, labels), = _held_out(shared_data, "usiigaci", "usiigaci-validation.txt", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)  # its own kind of image: no warning
        prediction = predict(load_model("cells"), image, device="cpu")
    assert average_precision([labels], [prediction.labels])["ap_pooled"][0] > CELLS_AP50


@pytest.mark.usefixtures("one_torch_thread")
def test_a_model_says_when_an_image_is_unlike_its_training_data(shared_data, nuclei):
    (phase_contrast, _), = _held_out(shared_data, "usiigaci", "usiigaci-validation.txt", 1)
    with pytest.warns(ImageWarning, match="looks unlike the images nuclei was trained on.*embedded: cells"):
        predict(nuclei, phase_contrast[:512, :512], device="cpu")
    with pytest.warns(ImageWarning, match="no diameter estimated: the image looks unlike"):
        assert estimate_diameter(nuclei, phase_contrast[:512, :512], device="cpu") is None
    fluorescence, _ = _held_out(shared_data, "dsb2018", "dsb2018-validation.txt", 1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)
        predict(nuclei, fluorescence, device="cpu")
