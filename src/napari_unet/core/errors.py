"""Exceptions and warnings that the core raises for the user to read.

Every message is written for a biologist, not a developer: it says what is wrong with
the input and, where possible, what to do about it. The command line prints these as one
line; the napari widgets show them as notifications.
"""

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["NapariUnetError", "InputError", "ModelFileError", "WriteError", "ClusterError", "InputWarning", "ImageWarning",
           "system_reason", "warnings_named"]


class NapariUnetError(ValueError):
    """Base class of the errors caused by user input, not by a bug."""


class InputError(NapariUnetError):
    """An image, label image or setting that cannot be used as given."""


class ModelFileError(NapariUnetError):
    """A model file that is missing, corrupt, truncated or not a napari-unet model."""


class WriteError(NapariUnetError):
    """A result that could not be written once work had begun: a full or read-only disk, no permission."""


class ClusterError(NapariUnetError):
    """A Dask cluster that lost the work given to it: its workers stopped or were killed."""


def system_reason(error: OSError) -> str:
    """What the operating system says went wrong, in its words ("permission denied")."""
    return (error.strerror or str(error)).lower()


class InputWarning(UserWarning):
    """Input that was usable after an automatic fix the user should know about."""


class ImageWarning(InputWarning):
    """An :class:`InputWarning` about one image (colours made gray, NaN pixels, no objects to size).

    A batch names the file it concerns; warnings about a whole run's settings (a tile
    size raised, a batch halved) are plain :class:`InputWarning`.
    """


@contextlib.contextmanager
def warnings_named(name: str) -> Iterator[None]:
    """Image warnings raised within, given again with ``name`` before them (once per message); others as they were.

    In a folder of files, "the image has 3 colour channels" does not say which file has.
    (``warnings`` records the warnings of the whole process meanwhile: those of another
    thread too, which then come out named.)
    """
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # given also when an error follows them
        said = set()
        for warning in caught:
            message = warning.message
            if issubclass(warning.category, ImageWarning):
                message = str(message) if str(message).startswith(f"{name}:") else f"{name}: {message}"
                if message in said:
                    continue
                said.add(message)
            warnings.warn_explicit(message, warning.category, warning.filename, warning.lineno)
