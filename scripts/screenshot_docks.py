"""Screenshot of the three napari-unet docks in a laptop-sized napari window (docs/images/docks.png).

Train, Predict and Batch are opened one after the other from the plugin, as from the
Plugins menu, in a 1280x800 window: they open as tabs of one dock, each as tall as the
window, and the canvas keeps its width. Run under a virtual screen:

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshot_docks.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import save_screenshot, settle  # noqa: E402

#: A laptop's napari window.
WINDOW_SIZE = (1280, 800)


def main() -> int:
    import napari

    viewer = napari.Viewer(show=True, title="napari")
    try:
        viewer.window.resize(*WINDOW_SIZE)
        viewer.open_sample("napari-unet-loop", "nuclei")
        docks = {}
        for name in ("Train", "Predict", "Batch"):
            docks[name], _ = viewer.window.add_plugin_dock_widget("napari-unet-loop", name)
            settle(0.3)
        docks["Train"].raise_()  # the dock a user starts with
        viewer.reset_view()
        save_screenshot(viewer, "docks.png")
        canvas = viewer.window._qt_viewer.canvas.native
        print(f"canvas {canvas.width()}x{canvas.height()}, Train dock {docks['Train'].width()}x{docks['Train'].height()}")
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
