"""The core of napari-unet: network, targets, augmentation, training, prediction, files.

Nothing in this package imports Qt or napari; the command line and the napari widgets
are thin layers over it.
"""
