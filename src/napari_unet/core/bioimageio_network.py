"""The U-Net of a bioimage.io package, returning class probabilities; imports torch only.

:mod:`napari_unet.core.bioimageio` copies this file into every package it writes as the
architecture of the ``pytorch_state_dict`` weights, and scripts it into the
``torchscript`` weights, so that a tool that reads bioimage.io packages (bioimageio.core,
for one) rebuilds the network without napari-unet installed. It is
:class:`napari_unet.core.model.UNet` written out with plain keyword arguments, with the
same parameter names (a package's weights are our model's state dict as it is, and load
into either) and a softmax over the classes at the end: the package's output is the
probabilities that napari-unet post-processes, not logits. A test checks that both
networks compute the same. Written for ``torch.jit.script``, so that the TorchScript
weights take any input size the network does.
"""

import torch
from torch import nn

__all__ = ["UNetProbabilities"]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=padding, bias=not batch_norm))
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
        # The center of the skip of x's size: a crop only with "valid" padding.
        dy = (skip.shape[-2] - x.shape[-2]) // 2
        dx = (skip.shape[-1] - x.shape[-1]) // 2
        skip = skip[:, :, dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


class UNetProbabilities(nn.Module):
    """A 2D U-Net returning class probabilities ``(batch, num_classes, height, width)``.

    Args:
        in_channels: Image channels the network takes.
        num_classes: 2 (background, separated foreground) or 3 (background, interior,
            boundary).
        depth: Number of 2x2 poolings.
        base_width: Feature channels of the first level, doubled at every level.
        batch_norm: Batch normalization after every convolution.
        dropout: Dropout probability at the end of the contracting path.
        padding: "same" keeps the size (the input a multiple of ``2**depth``); "valid"
            is the paper's unpadded network, whose output is smaller than its input.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 4, base_width: int = 32,
                 batch_norm: bool = True, dropout: float = 0.0, padding: str = "same"):
        super().__init__()
        pad = 1 if padding == "same" else 0
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.down.append(DoubleConv(channels, width, pad, batch_norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1], pad, batch_norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            [UpConcat(widths[level + 1], widths[level], pad, batch_norm) for level in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        index = len(skips) - 1
        for block in self.up:
            x = block(x, skips[index])
            index -= 1
        return torch.softmax(self.head(x), dim=1)
