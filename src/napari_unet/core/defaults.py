"""Defaults that the core, the command line and the widgets all show, in one place.

This module imports nothing, so that the command line can name them in its help
without importing numpy or torch (``napari-unet --help`` answers in about 0.15 s).
"""

#: Smallest object kept by post-processing, in pixels: a speck of noise under this is
#: dropped (a nucleus imaged at 10x spans about 80 pixels).
MIN_OBJECT_SIZE = 10

#: Height of the border weight between touching objects (the U-Net paper's w0).
BORDER_W0 = 10.0

#: Width of the border weight in pixels (the U-Net paper's sigma).
BORDER_SIGMA = 5.0
