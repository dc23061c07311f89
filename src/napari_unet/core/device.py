"""Choosing the torch device and mixed precision for a user's setting."""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from .errors import InputError, InputWarning

__all__ = ["resolve_device", "mixed_precision_dtype", "autocast", "inference_dtype", "grad_scaler",
           "available_devices", "is_out_of_memory", "smaller_batch_after"]


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


def mixed_precision_dtype(device: torch.device, amp: bool = True) -> torch.dtype:
    """What mixed precision (``amp``) computes in on ``device``.

    float16 on CUDA. bfloat16 on a CPU with Intel AMX: its matrix units multiply
    bfloat16 three to four times as fast as its vector units multiply float32 (on 2
    cores a plane goes through ``nuclei`` 1.5 to 2.5 times as fast, a training step of
    the default network 2.6 times), and bfloat16 keeps float32's range, so training
    needs no loss scaling; convolutions still sum in float32. float32 when ``amp`` is
    off, on Apple MPS, and on CPUs without AMX: with AVX512_BF16 instructions alone
    (oneDNN held below AMX on a CPU that has it) bfloat16 took 1.3 times longer than
    float32, to predict a plane and for a training step.
    """
    if not amp:
        return torch.float32
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_amx():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, enabled: bool = True):
    """Autocast to :func:`mixed_precision_dtype` around a network's forward pass; a no-op where that is float32."""
    dtype = mixed_precision_dtype(device, enabled)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def inference_dtype(device: torch.device, amp: bool = True) -> torch.dtype:
    """The dtype an inference copy of a network is converted to on ``device``.

    bfloat16 where mixed precision is bfloat16 (a CPU with AMX): the copy is converted
    whole, as autocast would leave oneDNN's fused convolutions
    (:mod:`~napari_unet.core.onednn`) in float32. float32 elsewhere; on CUDA mixed
    precision is :func:`autocast` around the float32 copy.
    """
    dtype = mixed_precision_dtype(device, amp)
    return dtype if dtype == torch.bfloat16 else torch.float32


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Loss scaling for a training step: on for float16 (CUDA), a pass-through for every other precision."""
    return torch.amp.GradScaler("cuda", enabled=mixed_precision_dtype(device, amp) == torch.float16)


def _cpu_has_amx() -> bool:
    """Whether this CPU has AMX, oneDNN convolves bfloat16 here, and may use AMX to do it."""
    if not _onednn_may_use_amx():
        return False
    # Private probes of PyTorch's own CPU dispatch; without them float32 is the safe answer.
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None),
              getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None))
    try:
        return all(probe is not None and bool(probe()) for probe in probes)
    except Exception:  # noqa: BLE001 - a failing probe means no AMX path, not a failed prediction
        return False


def _onednn_may_use_amx() -> bool:
    """Whether oneDNN's instruction set is not held below AMX (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``).

    PyTorch's probes look at the CPU only, and oneDNN held below AMX would convolve
    bfloat16 with slower instructions than float32's.
    """
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return isa in ("ALL", "DEFAULT") or "AMX" in isa


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
