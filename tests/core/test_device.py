"""Choosing the torch device and mixed precision."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from napari_unet.core.device import (
    _cpu_has_amx,
    autocast,
    available_devices,
    grad_scaler,
    inference_dtype,
    mixed_precision_dtype,
    resolve_device,
)
from napari_unet.core.errors import InputError

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()


@pytest.mark.skipif(HAS_CUDA or HAS_MPS, reason="an accelerator is available here")
@pytest.mark.parametrize("name", ["auto", "AUTO", "", None])
def test_auto_is_the_cpu_without_an_accelerator(name):
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
def test_auto_prefers_cuda():
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("name", ["cpu", "CPU", "cpu:0"])
def test_cpu_always_works(name):
    assert resolve_device(name).type == "cpu"


def test_a_torch_device_is_passed_through():
    device = torch.device("cpu")
    assert resolve_device(device) is device


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("name", ["cuda", "CUDA", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_an_input_error(name):
    with pytest.raises(InputError, match="CUDA"):
        resolve_device(name)


@pytest.mark.skipif(HAS_MPS, reason="MPS is available here")
@pytest.mark.parametrize("name", ["mps", "MPS"])
def test_mps_without_apple_silicon_is_an_input_error(name):
    with pytest.raises(InputError, match="MPS"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "garbage", "cpu:x", "tpu", "0"])
def test_unknown_names_are_an_input_error(name):
    with pytest.raises(InputError) as raised:
        resolve_device(name)
    assert "auto, cpu, cuda or mps" in str(raised.value) or "unknown" in str(raised.value)


def test_available_devices():
    devices = available_devices()
    assert devices[:2] == ["auto", "cpu"]
    assert ("cuda" in devices) == HAS_CUDA
    assert ("mps" in devices) == HAS_MPS
    for name in devices:
        resolve_device(name)  # every offered choice works


@pytest.mark.parametrize("enabled", [True, False])
def test_autocast_is_a_no_op_on_the_cpu(enabled):
    device = torch.device("cpu")
    context = autocast(device, enabled)
    assert isinstance(context, contextlib.nullcontext)
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with context:
        assert not torch.is_autocast_enabled("cpu")
        product = a @ b
        conv = torch.nn.functional.conv2d(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3))
    assert product.dtype == torch.float32 and conv.dtype == torch.float32
    torch.testing.assert_close(product, a @ b)


def test_autocast_uses_float16_on_cuda_only_when_enabled():
    cuda = torch.device("cuda")
    assert isinstance(autocast(cuda, enabled=False), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when CUDA is absent
        context = autocast(cuda, enabled=True)
    assert isinstance(context, torch.autocast)
    assert context.fast_dtype == torch.float16
    assert isinstance(autocast(torch.device("mps"), enabled=True), contextlib.nullcontext)


@pytest.mark.parametrize("amx", [True, False])
def test_mixed_precision_is_float16_on_cuda_and_bfloat16_on_a_cpu_with_amx(amx, monkeypatch):
    from napari_unet.core import device

    monkeypatch.setattr(device, "_cpu_has_amx", lambda: amx)
    cpu, cuda, mps = (torch.device(name) for name in ("cpu", "cuda", "mps"))
    assert mixed_precision_dtype(cpu) == (torch.bfloat16 if amx else torch.float32)
    assert mixed_precision_dtype(cuda) == torch.float16
    assert mixed_precision_dtype(mps) == torch.float32
    assert {mixed_precision_dtype(d, amp=False) for d in (cpu, cuda, mps)} == {torch.float32}
    # Only a bfloat16 copy is converted; CUDA's is autocast around a float32 one.
    assert inference_dtype(cpu) == mixed_precision_dtype(cpu)
    assert inference_dtype(cuda) == inference_dtype(mps) == inference_dtype(cpu, amp=False) == torch.float32
    # Loss scaling for float16 only (a scaler turns itself off without CUDA: its request is checked).
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device_type, enabled: (device_type, enabled))
    assert grad_scaler(cuda, amp=True) == ("cuda", True)
    assert grad_scaler(cuda, amp=False) == grad_scaler(cpu, amp=True) == ("cuda", False)


def test_autocast_on_a_cpu_with_amx_is_bfloat16_when_enabled(cpu_with_amx):
    cpu = torch.device("cpu")
    assert isinstance(autocast(cpu, enabled=False), contextlib.nullcontext)
    with autocast(cpu, enabled=True):
        product = torch.randn(8, 8) @ torch.randn(8, 8)
    assert product.dtype == torch.bfloat16


# (_cpu_has_amx, imported when this module was, is the real probe, not the suite's stand-in)


def test_a_failing_amx_probe_means_float32(monkeypatch):
    def broken():
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert _cpu_has_amx() is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert _cpu_has_amx() is False


@pytest.mark.parametrize(("variable", "value", "amx"), [
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", False),
    ("DNNL_MAX_CPU_ISA", "avx2", False),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", True),
    ("ONEDNN_MAX_CPU_ISA", "ALL", True),
])
def test_onednn_held_below_amx_means_float32(variable, value, amx, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(variable, value)
    assert _cpu_has_amx() is amx


def test_no_bfloat16_convolutions_means_float32(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert _cpu_has_amx() is False
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert _cpu_has_amx() is True


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
def test_autocast_on_cuda_runs_in_half_precision():
    a = torch.randn(8, 8, device="cuda")
    with autocast(torch.device("cuda")):
        assert (a @ a).dtype == torch.float16
