"""Try the loop on real stained tissue and phase contrast in a real napari window, and screenshot it.

Run it from the repository root under a virtual screen, with the real data beside the
repository (``../shared/data``)::

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshots_modalities.py

It opens held-out images that no embedded model trained on (from the fixed validation
splits of ``scripts/splits/``), drives the widgets as a user does, and writes to
``docs/images/``:

- ``predict-he.png``: an H&E image segmented by the Predict widget with ``embedded: nuclei``,
  which hands colour images to ``nuclei-he``.
- ``train-he.png``: the Train widget after fine-tuning ``nuclei`` on that image's
  annotation for one minute, with the prediction it makes when done.
- ``predict-phase-contrast.png``: a phase-contrast image segmented with ``embedded: cells``.

It prints the AP50 of each prediction against the image's annotation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import WINDOW_SIZE, process_events_until, save_screenshot, show_only  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
DATA = REPOSITORY.parent / "shared" / "data"
SPLITS = REPOSITORY / "scripts" / "splits"


def held_out(dataset: str, listing: str, index: int = 0) -> tuple:
    """Image and labels of a held-out image, and its name."""
    name = (SPLITS / listing).read_text().split()[index]
    return (tifffile.imread(DATA / dataset / "images" / name), tifffile.imread(DATA / dataset / "labels" / name),
            Path(name).stem)


def ap50(truth, labels) -> float:
    from napari_unet.core.metrics import average_precision

    return average_precision([truth], [labels])["ap_pooled"][0]


def predict_with(viewer, predict, image_layer, model: str):
    """Run the Predict widget with an embedded model; returns the prediction layer."""
    from napari_unet.widgets._common import EMBEDDED_PREFIX

    predict.image.value = image_layer
    predict.model.source.value = EMBEDDED_PREFIX + model
    predict.device.value = "cpu"
    predict.start()
    process_events_until(lambda: predict.run.enabled, 300, "the prediction")
    if predict.output is None:
        raise RuntimeError("the prediction failed; see the messages above")
    return predict.output


def save_overlay(viewer, image_layer, overlay, name: str, opacity: float = 0.6) -> None:
    """Screenshot ``overlay`` translucent over its image, the two alone and in full view."""
    overlay.opacity = opacity
    show_only(viewer, [image_layer, overlay])
    viewer.reset_view()
    save_screenshot(viewer, name)


def main() -> int:
    import napari

    if not DATA.is_dir():
        raise SystemExit(f"the real data folder {DATA} is missing")
    viewer = napari.Viewer(show=True, title="napari")
    try:
        viewer.window.resize(*WINDOW_SIZE)
        # -- H&E: predict with nuclei --------------------------------------------------
        image, truth, name = held_out("dsb2018_color", "dsb2018-color-validation.txt")
        image_layer = viewer.add_image(image, name=name, rgb=True)
        truth_layer = viewer.add_labels(truth, name=f"{name} annotation", opacity=0.5)
        predict_dock, predict = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Predict")
        prediction = predict_with(viewer, predict, image_layer, "nuclei")
        print(f"H&E {name}: nuclei (nuclei-he) AP50 {ap50(truth, prediction.data):.3f}")
        save_overlay(viewer, image_layer, prediction, "predict-he.png")

        # -- H&E: fine-tune nuclei on the annotated image for a minute -------------------
        train_dock, train = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Train")
        predict_dock.hide()
        train.image.value = image_layer
        train.labels_layer.value = truth_layer
        train.max_minutes.value = 1.0
        train.device.value = "cpu"
        predictions_before = len(viewer.layers)
        started = time.monotonic()
        train.start_training()
        process_events_until(lambda: train.start.enabled, 240, "training to finish")
        if train.model is None:
            raise RuntimeError(f"training failed ({train.status.value}); see the messages above")
        print(f"fine-tuned for {time.monotonic() - started:.0f} s: {train.status.value}")
        # "predict the image when done" adds a layer, and fills it once the worker has predicted it.
        process_events_until(lambda: len(viewer.layers) > predictions_before and viewer.layers[-1].data.any(), 120,
                             "the prediction after training")
        after = viewer.layers[-1]
        print(f"H&E {name}: after fine-tuning AP50 {ap50(truth, after.data):.3f} (on the image it trained on)")
        save_overlay(viewer, image_layer, after, "train-he.png")

        # -- Phase contrast: predict with cells ----------------------------------------
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        train_dock.hide()
        predict_dock.show()
        image, truth, name = held_out("usiigaci", "usiigaci-validation.txt")
        image_layer = viewer.add_image(image, name=name)
        prediction = predict_with(viewer, predict, image_layer, "cells")
        print(f"phase contrast {name}: cells AP50 {ap50(truth, prediction.data):.3f}")
        save_overlay(viewer, image_layer, prediction, "predict-phase-contrast.png", opacity=0.5)
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
