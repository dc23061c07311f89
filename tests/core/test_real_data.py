"""Integration tests on the real microscopy data in ../shared/data (skipped without it).

Training runs a fixed number of steps (not a time budget) so results do not depend on
how busy the machine is.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.bundle import Model
from napari_unet.core.io import collect_tiffs, pair_by_name, read_tiff
from napari_unet.core.metrics import average_precision, pixel_scores
from napari_unet.core.model import NetworkConfig
from napari_unet.core.predict import predict
from napari_unet.core.train import TrainingConfig, TrainingSample, train

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _dsb_pairs(shared_data, count):
    pairs = pair_by_name(collect_tiffs(shared_data / "dsb2018" / "images"), collect_tiffs(shared_data / "dsb2018" / "labels"))
    loaded = [(read_tiff(i)[0], read_tiff(lab)[0]) for i, lab in pairs[:80]]
    small = [(image, labels) for image, labels in loaded if image.shape == (256, 256)]
    assert len(small) >= count
    return small[:count]


def test_training_on_dsb2018_nuclei_finds_the_nuclei(shared_data):
    pairs = _dsb_pairs(shared_data, 14)
    train_pairs, test_pairs = pairs[:10], pairs[10:]
    network = NetworkConfig(depth=3, base_width=8)

    def ap50(model):
        predictions = [predict(model, image, device="cpu").labels for image, _ in test_pairs]
        return average_precision([labels for _, labels in test_pairs], predictions, thresholds=(0.5,))["ap_pooled"][0]

    config = TrainingConfig(epochs=4, steps_per_epoch=50, patch_size=96, batch_size=8, learning_rate=3e-3,
                            device="cpu", val_fraction=0.2, seed=0)
    result = train([TrainingSample(i, lab, name="dsb") for i, lab in train_pairs], network_config=network, config=config)
    before, after = ap50(Model.new(network)), ap50(result.model)
    assert after > 0.5, (before, after)
    assert after > before + 0.3


def test_training_on_isbi2012_em_separates_membranes(shared_data):
    volume, _ = read_tiff(shared_data / "isbi2012" / "volume.tif")
    truth, _ = read_tiff(shared_data / "isbi2012" / "labels.tif")
    assert volume.shape == truth.shape == (20, 512, 512)
    # Cells (label 1) are the objects; membranes (0) are background. Train on 4 slices,
    # test on a slice far from them.
    crop = np.s_[:, :256, :256]
    config = TrainingConfig(epochs=4, steps_per_epoch=50, patch_size=96, batch_size=8, learning_rate=3e-3,
                            w0=5.0, device="cpu", val_fraction=0.25, seed=0)
    result = train([TrainingSample(volume[0:4][crop[1:]], truth[0:4][crop[1:]])],
                   network_config=NetworkConfig(depth=3, base_width=8), config=config)
    probability = predict(result.model, volume[19][crop[1:]], device="cpu").probability
    cells = truth[19][crop[1:]] > 0
    pixel_error = float(np.mean((probability > 0.5) != cells))
    baseline = float(np.mean(~cells))  # predicting "cell" everywhere
    assert pixel_error < 0.75 * baseline, (pixel_error, baseline)
    assert pixel_scores(probability > 0.5, cells)["f1"] > 0.85


def test_real_labels_are_not_taken_for_images_and_real_images_are(shared_data):
    from napari_unet.core.targets import intensity_image_warning

    for kind in ("images", "labels"):
        files = sorted((shared_data / "dsb2018" / kind).glob("*.tif"))[:10]
        found = [intensity_image_warning(read_tiff(path)[0]) for path in files]
        assert all(found) if kind == "images" else not any(found)
    isbi = shared_data / "isbi2012"
    assert intensity_image_warning(read_tiff(isbi / "volume.tif")[0][:2]) is not None
    assert intensity_image_warning(read_tiff(isbi / "labels.tif")[0][:2]) is None
