"""A U-Net's blocks on oneDNN's fused convolutions, for prediction on the CPU.

In eager PyTorch each ReLU after a convolution is one more pass over the activations,
and each skip connection is copied into a concatenation before the convolution that
reads it: a fifth of a depth-4 U-Net's time on a 2-core CPU. oneDNN, PyTorch's CPU
convolution library, can rectify a convolution's output as it writes it, and a
convolution of a concatenation is the sum of the convolutions of its parts, the second
added and rectified as it is written. ``torch.compile`` fuses the same way, after tens of
seconds of compiling for each input shape; the operator it emits for these fusions
(``torch.ops.mkldnn._convolution_pointwise``) is called here directly, so they cost
nothing up front. The operator is private to PyTorch: :func:`available` checks once per
process that it exists and gives the plain blocks' output, and the plain blocks stay
where it does not.
"""

from __future__ import annotations

import functools
import logging
import threading

import torch
from torch import nn

from .model import DoubleConv, NetworkConfig, UNet, UpConcat, cropped_like

__all__ = ["available", "with_fused_blocks"]

logger = logging.getLogger(__name__)

_ONE = [1, 1]  # stride and dilation of every 3x3 convolution of the network


def _pointwise():
    return torch.ops.mkldnn._convolution_pointwise


def _checked(conv: nn.Conv2d) -> nn.Conv2d:
    if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        raise ValueError("only plain 3x3 convolutions are fused")
    return conv


class _ConvReLU(nn.Module):
    """A convolution and the ReLU after it, in one pass."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        _checked(conv)
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.padding = list(conv.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pointwise()(x, self.weight, self.bias, self.padding, _ONE, _ONE, 1, "relu", [], "")


class _FusedDoubleConv(nn.Module):
    """:class:`~napari_unet.core.model.DoubleConv` (batch norm folded) with each ReLU fused."""

    def __init__(self, block: DoubleConv):
        super().__init__()
        self.convs = nn.ModuleList(_ConvReLU(layer) for layer in block if isinstance(layer, nn.Conv2d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return x


class _FusedUpConcat(nn.Module):
    """:class:`~napari_unet.core.model.UpConcat` without the concatenation.

    ``conv(cat([skip, up]))`` is ``conv_skip(skip) + conv_up(up)``, the kernel split
    along its input channels; the sum and the ReLU are fused into the second convolution.
    """

    def __init__(self, block: UpConcat):
        super().__init__()
        self.up = block.up
        first, second = (layer for layer in block.conv if isinstance(layer, nn.Conv2d))
        _checked(first)
        skip_channels = first.in_channels // 2  # the skip comes first in the concatenation
        weight = first.weight.detach()
        self.register_buffer("skip_weight", weight[:, :skip_channels].clone())
        self.register_buffer("up_weight", weight[:, skip_channels:].clone())
        self.register_buffer("bias", None if first.bias is None else first.bias.detach().clone())
        self.padding = list(first.padding)
        self.second = _ConvReLU(second)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = cropped_like(skip, x)
        pointwise = _pointwise()
        partial = pointwise(skip, self.skip_weight, self.bias, self.padding, _ONE, _ONE, 1, "none", [], "")
        x = pointwise.binary(x, partial, self.up_weight, None, self.padding, _ONE, _ONE, 1, "add", 1.0, "relu", [], "")
        return self.second(x)


def with_fused_blocks(network: UNet) -> UNet:
    """Replace the blocks of an eval-mode CPU network whose batch norm is folded; returns it."""
    network.down = nn.ModuleList(_FusedDoubleConv(block) for block in network.down)
    network.bottom = _FusedDoubleConv(network.bottom)
    network.up = nn.ModuleList(_FusedUpConcat(block) for block in network.up)
    return network


_checking = threading.Lock()


def available() -> bool:
    """Whether this PyTorch has the fused operator and it gives the plain blocks' output (checked once)."""
    with _checking:  # once, even when the first predictions start in several threads at a time
        return _check()


@functools.cache
def _check() -> bool:
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return False
    cpu = torch.device("cpu")
    try:
        # The check's networks and image come from the CPU generator, saved and restored
        # around it (and seeded alone: torch.manual_seed would also reseed the GPUs'),
        # so that the user's random numbers stay as they were.
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.default_generator.manual_seed(0)
            for padding in ("same", "valid"):
                network = UNet(NetworkConfig(depth=2, base_width=4, padding=padding))
                plain = network.inference_copy(cpu, fuse=False)
                image = torch.rand(2, 1, 52, 52).to(memory_format=torch.channels_last)
                expected = plain(image)
                fused = with_fused_blocks(network.inference_copy(cpu, fuse=False))(image)
                if fused.shape != expected.shape or not torch.allclose(fused, expected, rtol=1e-4, atol=1e-4):
                    logger.info("oneDNN's fused convolutions differ from the plain ones here; not used")
                    return False
    except Exception as error:  # noqa: BLE001 - a private operator may fail in any way; the plain blocks remain
        logger.info("oneDNN's fused convolutions are not usable here (%s)", error)
        return False
    return True
