"""Shared fixtures: tiny networks, generated nuclei and the real data folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

#: Real microscopy data beside the project root (see its README); tests skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def _float32_on_every_cpu():
    """Predict in float32 on CPUs with AMX too, where mixed precision would mean bfloat16.

    Most tests check tiling and stitching to float32 rounding; with this the suite checks
    the same on every machine. The bfloat16 path has tests of its own (``cpu_with_amx``).
    Its own patch, so that a test's ``monkeypatch.undo()`` leaves it in place.
    """
    from napari_unet.core import device

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device, "_cpu_has_amx", lambda: False)
        yield


@pytest.fixture
def cpu_with_amx(monkeypatch):
    """Take this CPU for one with AMX: mixed precision predicts in bfloat16 (slowly where it has none).

    Skips on CPUs whose oneDNN cannot convolve bfloat16 at all (no AVX-512).
    """
    import torch

    from napari_unet.core import device

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN convolves no bfloat16 on this CPU")
    monkeypatch.setattr(device, "_cpu_has_amx", lambda: True)


@pytest.fixture
def inference_dtypes(monkeypatch) -> list:
    """The dtype of the network copy each tile loop of a prediction runs, in order."""
    from napari_unet.core import predict as core_predict

    dtypes = []
    real = core_predict._inference_network

    def noting(network, device, compiled_for=None, amp=False):
        copy = real(network, device, compiled_for, amp)
        dtypes.append(next(copy.parameters()).dtype)
        return copy

    monkeypatch.setattr(core_predict, "_inference_network", noting)
    return dtypes


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread: faster for tiny networks, and steady on a shared CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def first_labels_wait_for_the_network(monkeypatch):
    """Make a prediction's first labels wait (60 s at most) until the network runs on after them.

    Returns a function that does it for a network and returns the list that gets True
    if the network ran. Done one after the other, the first plane's labels would wait
    in vain: the network would go on to the next plane only once they are made.
    "After them" counts from when the first labels are handed to their thread, not from
    when that thread gets to run: the next plane may go through the network before it
    does (which is the overlap, not its absence).
    """
    from napari_unet.core import predict as core_predict

    def watch(network) -> list[bool]:
        forwards = [0]
        network.register_forward_pre_hook(lambda module, inputs: forwards.__setitem__(0, forwards[0] + 1))
        handed_over: list[int] = []  # the network's passes when the first labels were handed to their thread
        waited: list[bool] = []
        real_thread, real_labels = core_predict._InThread, core_predict.probabilities_to_labels

        class NotingThread(real_thread):
            def __init__(self, function, *args):
                if not handed_over:
                    handed_over.append(forwards[0])
                super().__init__(function, *args)

        def labels_waiting_for_the_network(*args, **kwargs):
            if not waited:  # the first labels; the next are made only once these are
                deadline = time.monotonic() + 60
                while forwards[0] <= handed_over[0] and time.monotonic() < deadline:
                    time.sleep(0.01)
                waited.append(forwards[0] > handed_over[0])
            return real_labels(*args, **kwargs)

        monkeypatch.setattr(core_predict, "_InThread", NotingThread)
        monkeypatch.setattr(core_predict, "probabilities_to_labels", labels_waiting_for_the_network)
        return waited

    return watch


@pytest.fixture
def tiny_config():
    """A U-Net small enough to train in seconds on a CPU."""
    from napari_unet.core.model import NetworkConfig

    return NetworkConfig(depth=2, base_width=8, batch_norm=True)


@pytest.fixture
def nuclei():
    """One generated 128x128 image of touching nuclei and its labels."""
    from napari_unet.core.synthetic import synthetic_nuclei

    return synthetic_nuclei((128, 128), count=14, seed=1)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("the real data folder ../shared/data is absent")
    return SHARED_DATA
