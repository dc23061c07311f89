"""Label a real z-stack in 3D with the Predict widget in a real napari window, and screenshot napari's 3D view.

Run it from the repository root under a virtual screen, with the real data beside the
repository (``../shared/data``)::

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshot_3d.py

It opens scikit-image's ``cells3d`` nuclei (``nuclei3d/cells3d_nuclei.tif``) at its voxel
size (0.29 x 0.26 x 0.26 um, as the layer's scale), ticks the Predict widget's 3D
checkbox with ``embedded: nuclei`` and the nuclei's diameter, and writes
``docs/images/predict-3d.png``: the labels over the image in napari's 3D view. It prints
the 3D AP50 of the labels against the volume's (approximate) 3D labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import WINDOW_SIZE, process_events_until, save_screenshot, show_only  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
VOLUME = REPOSITORY.parent / "shared" / "data" / "nuclei3d"
VOXEL = (0.29, 0.26, 0.26)  # um, from the data's README: the TIFF records none
DIAMETER = 47  # pixels: the median largest cross-section of its annotated nuclei


def main() -> int:
    import napari

    from napari_unet.core.metrics import match_counts
    from napari_unet.widgets import PredictWidget
    from napari_unet.widgets._common import EMBEDDED_PREFIX

    if not VOLUME.is_dir():
        raise SystemExit(f"the real data folder {VOLUME} is missing")
    image = tifffile.imread(VOLUME / "images" / "cells3d_nuclei.tif")
    truth = tifffile.imread(VOLUME / "labels" / "cells3d_nuclei.tif")
    viewer = napari.Viewer(show=True, title="napari")
    try:
        viewer.window.resize(*WINDOW_SIZE)
        layer = viewer.add_image(image, name="cells3d nuclei", scale=VOXEL, units=("um",) * 3)
        predict = PredictWidget(viewer)
        viewer.window.add_dock_widget(predict, name="Predict", area="right")
        predict.image.value = layer
        predict.model.source.value = EMBEDDED_PREFIX + "nuclei"
        predict.diameter.value = DIAMETER
        predict.volume.value = True
        predict.device.value = "cpu"
        predict.start()
        process_events_until(lambda: predict.run.enabled, 600, "the prediction")
        labels = predict.output
        if labels is None:
            raise RuntimeError("the prediction failed; see the messages above")
        ap50 = match_counts(truth, labels.data, (0.5,)).average_precision[0]
        print(f"3D AP50 {ap50:.3f}: {labels.data.max()} nuclei found, {truth.max()} annotated")
        show_only(viewer, [layer, labels])
        layer.rendering, layer.blending = "mip", "additive"
        labels.opacity = 0.7
        viewer.dims.ndisplay = 3
        viewer.reset_view()
        viewer.camera.angles = (-20, 35, 65)  # tilted, so that the nuclei show their depth
        viewer.camera.zoom *= 0.85
        save_screenshot(viewer, "predict-3d.png")
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
