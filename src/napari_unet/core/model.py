"""The 2D U-Net of Ronneberger, Fischer and Brox (MICCAI 2015), built from small blocks.

The contracting path repeats two 3x3 convolutions with ReLU and a 2x2 max-pooling; the
expanding path repeats a 2x2 up-convolution, concatenation with the cropped skip
connection and two 3x3 convolutions; a 1x1 convolution maps to the classes. The paper's
unpadded ("valid") convolutions are available; "same" padding is the default because it
makes any input size a multiple of ``2**depth`` usable.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import InputError

__all__ = ["NetworkConfig", "UNet", "scratch_network_config"]

#: Most poolings and first-level channels a network may have.
MAX_DEPTH = 7
MAX_BASE_WIDTH = 256


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of a U-Net; stored in every model file so the network can be rebuilt.

    Args:
        in_channels: Number of image channels the network takes.
        num_classes: 2 (background, separated foreground) or 3 (background, object
            interior, object boundary).
        depth: Number of 2x2 poolings (the paper uses 4).
        base_width: Feature channels of the first level; doubled at every level (paper: 64).
        batch_norm: Batch normalization after every convolution.
        dropout: Dropout probability at the end of the contracting path (paper: 0.5).
        padding: "same" keeps the size; "valid" is the paper's unpadded convolution.
    """

    in_channels: int = 1
    num_classes: int = 2
    depth: int = 4
    base_width: int = 32
    batch_norm: bool = True
    dropout: float = 0.0
    padding: str = "same"

    def __post_init__(self):
        if self.padding not in ("same", "valid"):
            raise InputError(f"padding must be 'same' or 'valid', not {self.padding!r}")
        if self.num_classes not in (2, 3):
            raise InputError(f"num_classes must be 2 or 3, not {self.num_classes}")
        if self.depth < 1 or self.base_width < 1 or self.in_channels < 1:
            raise InputError("depth, base_width and in_channels must be positive")
        # Each level doubles the channels: depth 8 of width 32 already has 8192 at the
        # bottom, far beyond any U-Net that fits a GPU.
        if self.depth > MAX_DEPTH or self.base_width > MAX_BASE_WIDTH:
            raise InputError(f"depth is at most {MAX_DEPTH} and base width at most {MAX_BASE_WIDTH} "
                             f"(the U-Net paper: depth 4, width 64), not {self.depth} and {self.base_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown network settings: {sorted(unknown)}")
        return cls(**values)


#: Poolings and first-level channels of a network trained from scratch on a CPU, so that a
#: first model trains there in minutes: it predicts a plane about 2 to 3.5 times faster than
#: :class:`NetworkConfig`'s default size (docs/benchmarks.md, "One plane in the widget").
CPU_SCRATCH_DEPTH = 3
CPU_SCRATCH_BASE_WIDTH = 16


def scratch_network_config(device: torch.device, depth: int | None = None, base_width: int | None = None,
                           **settings) -> NetworkConfig:
    """The architecture of a network trained from scratch on ``device``.

    The one rule for the Train widget and ``napari-unet train``: on a CPU a lighter network
    (:data:`CPU_SCRATCH_DEPTH` poolings, :data:`CPU_SCRATCH_BASE_WIDTH` channels in the
    first level); on a GPU :class:`NetworkConfig`'s default size.

    Args:
        device: Where the network trains.
        depth: Number of 2x2 poolings; None: the device's default.
        base_width: Feature channels of the first level; None: the device's default.
        **settings: Any other :class:`NetworkConfig` field (``num_classes``, ``padding``).

    Raises:
        InputError: If a setting is out of range.
    """
    on_cpu = device.type == "cpu"
    if depth is None:
        depth = CPU_SCRATCH_DEPTH if on_cpu else NetworkConfig.depth
    if base_width is None:
        base_width = CPU_SCRATCH_BASE_WIDTH if on_cpu else NetworkConfig.base_width
    return NetworkConfig(depth=depth, base_width=base_width, **settings)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers.append(
                nn.Conv2d(channels, out_channels, 3, padding=padding, bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpConcat(nn.Module):
    """2x2 up-convolution, concatenation with the (center-cropped) skip, two convolutions."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([cropped_like(skip, x), x], dim=1))


def cropped_like(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The center of ``skip`` of ``x``'s height and width."""
    dy = (skip.shape[-2] - x.shape[-2]) // 2
    dx = (skip.shape[-1] - x.shape[-1]) // 2
    if dy or dx:  # only with "valid" padding, as in the paper's Fig. 1
        skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
    return skip


class ChannelsLastMaxPool(nn.Module):
    """2x2 max pooling of an even-sized channels-last map, as two element-wise maxima.

    The same values as :class:`torch.nn.MaxPool2d` ``(2)``. PyTorch's CPU pooling also
    works out where each maximum came from: on 16 channels of a 1024x1024 plane it took
    20 ms on 2 cores, the two maxima (rows, then columns) 3 ms in bfloat16 and 6 ms in
    float32. Other inputs go to PyTorch's pooling.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if height % 2 or width % 2 or not x.is_contiguous(memory_format=torch.channels_last):
            return nn.functional.max_pool2d(x, 2)
        pixels = x.permute(0, 2, 3, 1)  # the memory's own order: (batch, height, width, channels)
        rows = torch.maximum(pixels[:, 0::2], pixels[:, 1::2])
        # Two neighbours along a row are now two halves of one row of 2 * channels values.
        pairs = rows.reshape(batch, height // 2, width // 2, 2 * channels)
        return torch.maximum(pairs[..., :channels], pairs[..., channels:]).permute(0, 3, 1, 2)


class UNet(nn.Module):
    """A 2D U-Net that returns class logits of shape (batch, num_classes, height, width).

    Args:
        config: The architecture; kept as ``self.config``.
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config = config or NetworkConfig()
        pad = 1 if config.padding == "same" else 0
        widths = [config.base_width * 2**level for level in range(config.depth + 1)]
        self.down = nn.ModuleList()
        channels = config.in_channels
        for width in widths[:-1]:
            self.down.append(DoubleConv(channels, width, pad, config.batch_norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1], pad, config.batch_norm)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            UpConcat(widths[level + 1], widths[level], pad, config.batch_norm)
            for level in reversed(range(config.depth))
        )
        self.head = nn.Conv2d(widths[0], config.num_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialization, N(0, sqrt(2/N)) with N the fan-in, as the paper recommends."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.ConvTranspose2d):
                # With kernel 2 and stride 2 every output pixel sees one kernel position, so
                # its fan-in is the number of input channels (torch would count out * 4).
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_channels))
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x)

    def inference_copy(self, device: torch.device, fuse: bool = True) -> UNet:
        """An eval-mode copy on ``device`` that computes the same, faster.

        Batch norm is folded into the convolution before it (one pass over the
        activations fewer), and on the CPU and CUDA the copy works in channels-last
        layout, which oneDNN and cuDNN convolve without reordering: about 1.5 times
        faster on a 2-core CPU. Channels-last input suits it best. On the CPU the pooling
        is :class:`ChannelsLastMaxPool`, and each ReLU and concatenation is fused into a
        convolution where PyTorch allows it (:mod:`~napari_unet.core.onednn`).

        Args:
            device: Where the copy runs.
            fuse: Fuse on the CPU (False: the plain blocks, for a compiler that fuses itself).
        """
        network = copy.deepcopy(self).eval()
        for block in network.modules():
            if isinstance(block, DoubleConv):
                layers = list(block)
                for index, (layer, following) in enumerate(zip(layers, layers[1:])):
                    if isinstance(layer, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
                        block[index] = fuse_conv_bn_eval(layer, following)
                        block[index + 1] = nn.Identity()
        network = network.to(device)
        if device.type in ("cpu", "cuda"):
            network = network.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            network.pool = ChannelsLastMaxPool()
        if fuse and device.type == "cpu":
            from . import onednn

            if onednn.available():
                network = onednn.with_fused_blocks(network)
        return network

    @property
    def size_multiple(self) -> int:
        """Input sizes (with "same" padding) must be multiples of this."""
        return 2**self.config.depth

    def output_size(self, input_size: int) -> int:
        """Output length along one axis for an input of ``input_size`` pixels.

        Raises:
            ValueError: If the size does not pass through the network evenly.
        """
        if self.config.padding == "same":
            if input_size % self.size_multiple:
                raise ValueError(f"input size {input_size} is not a multiple of {self.size_multiple}")
            return input_size
        size = input_size
        for _ in range(self.config.depth):
            size -= 4
            if size <= 0 or size % 2:
                raise ValueError(f"input size {input_size} does not fit a valid-padding U-Net")
            size //= 2
        size -= 4
        for _ in range(self.config.depth):
            size = 2 * size - 4
        if size <= 0:
            raise ValueError(f"input size {input_size} is too small for this U-Net")
        return size

    def valid_input_size(self, at_least: int) -> int:
        """Smallest input size of at least ``at_least`` that the network accepts."""
        if self.config.padding == "same":
            return math.ceil(at_least / self.size_multiple) * self.size_multiple
        size = max(at_least, 1)
        while True:
            try:
                self.output_size(size)
                return size
            except ValueError:
                size += 1

    @property
    def context(self) -> int:
        """Pixels on each side of a tile whose output is not the whole-image output.

        For "valid" padding this is exactly the border the network removes. For "same"
        padding it is the receptive-field radius (each 3x3 convolution at level ``l`` adds
        ``2**l``, each pooling at most ``2**l``), rounded up to a multiple of ``2**depth``
        so that tiles keep the pooling grid of the whole image: the central part of a
        tile then equals the whole-image prediction.
        """
        depth = self.config.depth
        if self.config.padding == "valid":
            size = self.valid_input_size(4 * 2**depth)
            return (size - self.output_size(size)) // 2
        radius = sum(5 * 2**level for level in range(depth)) + 2 * 2**depth
        return math.ceil(radius / self.size_multiple) * self.size_multiple
