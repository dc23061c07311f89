"""Choosing the torch device and mixed precision for a user's setting."""

from __future__ import annotations

import contextlib
import warnings

import torch

from .errors import InputError, InputWarning

__all__ = ["resolve_device", "autocast", "available_devices", "is_out_of_memory", "smaller_batch_after"]


def available_devices() -> list[str]:
    """Device choices that work on this machine, "auto" first."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a user's choice: "auto" takes CUDA, then Apple MPS, then the CPU.

    Raises:
        InputError: If the requested device does not exist on this machine.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available; use --device auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("Apple MPS was requested but is not available; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from error


def autocast(device: torch.device, enabled: bool = True):
    """float16 autocast on CUDA when ``enabled``; a no-op elsewhere (CPU and MPS run float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device running out of memory (CUDA, Apple MPS or the CPU)."""
    # CUDA raises torch.OutOfMemoryError; MPS and the CPU allocator a RuntimeError that says so.
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def smaller_batch_after(error: RuntimeError, size: int, device: torch.device, items: str, too_large: str) -> int:
    """The batch size to go on with after ``error`` stopped a batch of ``size`` items.

    Running out of memory halves the batch, with a warning naming ``items`` ("tiles",
    "patches"); any other error is raised again.

    Raises:
        InputError: ``too_large``, when a single item does not fit.
    """
    if not is_out_of_memory(error):
        raise error
    # Give cached blocks back, so that the smaller retry can fit.
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    if size == 1:
        raise InputError(too_large) from error
    smaller = size // 2
    warnings.warn(f"out of memory with {size} {items} at once; going on with {smaller}", InputWarning, stacklevel=3)
    return smaller
