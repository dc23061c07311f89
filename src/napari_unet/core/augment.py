"""Data augmentation as batched torch operations on the training device.

Every sample of a batch gets its own random elastic deformation (the paper's coarse 3x3
grid of displacement vectors drawn from a Gaussian with 10 px standard deviation, smoothly
interpolated to every pixel), rotation, flips, shift and gray-value change. One sampling
grid per sample moves the image, the class target, the weight map and the annotation mask
together: the image and weights are interpolated, the target and mask are sampled with
nearest neighbour so no new class value is ever invented.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation; ``strength`` scales all of them at once.

    Args:
        strength: Overall factor (0 switches augmentation off, 1 is the default).
        elastic_sigma: Standard deviation of the coarse-grid displacements, in pixels.
        elastic_grid: Points of the coarse displacement grid along each axis.
        rotation: Rotate by any angle (True) or not.
        flips: Random horizontal and vertical flips.
        shift: Largest shift, as a fraction of the patch size.
        scale: Largest zoom in or out, as a fraction (0.1 means 0.9x to 1.1x).
        brightness: Largest additive change of the normalized gray values.
        contrast: Largest multiplicative change of contrast, as a fraction.
        gamma: Largest change of the gamma exponent, as a fraction.
        noise: Largest standard deviation of added Gaussian noise.
        invert: Probability of inverting the gray values (teaches bright-on-dark and
            dark-on-bright objects at once).
    """

    strength: float = 1.0
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    rotation: bool = True
    flips: bool = True
    shift: float = 0.1
    scale: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    noise: float = 0.03
    invert: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AugmentConfig:
        return cls(**values)


def _uniform(shape, low, high, generator, device):
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def sampling_grid(
    batch: int,
    out_size: tuple[int, int],
    in_size: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Random sampling grids in ``grid_sample``'s normalized coordinates.

    The output patch looks at the center of an input window that may be larger than the
    patch, so that rotations and deformations pull in real context instead of padding.

    Returns:
        Tensor of shape ``(batch, out_h, out_w, 2)``.
    """
    s = config.strength
    out_h, out_w = out_size
    in_h, in_w = in_size
    # Output pixel coordinates in input pixels, relative to the window center.
    ys = torch.arange(out_h, device=device, dtype=torch.float32) - (out_h - 1) / 2
    xs = torch.arange(out_w, device=device, dtype=torch.float32) - (out_w - 1) / 2
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([x, y], dim=-1).expand(batch, out_h, out_w, 2)

    angle = _uniform(batch, -math.pi, math.pi, generator, device) * float(config.rotation and s > 0)
    zoom = 1.0 + _uniform(batch, -1, 1, generator, device) * config.scale * s
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    flip_x = torch.ones(batch, device=device)
    flip_y = torch.ones(batch, device=device)
    if config.flips and s > 0:
        flip_x = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
        flip_y = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
    matrix = torch.stack(
        [torch.stack([cos * flip_x, -sin * flip_y], -1), torch.stack([sin * flip_x, cos * flip_y], -1)],
        dim=-2,
    )  # (batch, 2, 2), acting on (x, y)
    shift = _uniform((batch, 1, 1, 2), -1, 1, generator, device) * config.shift * s
    shift = shift * torch.tensor([out_w, out_h], device=device, dtype=torch.float32)
    coords = torch.einsum("bij,bhwj->bhwi", matrix, points) + shift

    if config.elastic_sigma > 0 and s > 0:
        coarse = torch.randn(
            (batch, 2, config.elastic_grid, config.elastic_grid), generator=generator, device=device
        ) * (config.elastic_sigma * s)
        dense = F.interpolate(coarse, size=(out_h, out_w), mode="bicubic", align_corners=True)
        coords = coords + dense.permute(0, 2, 3, 1)

    # Window pixel (center-relative) -> normalized [-1, 1] with align_corners=True.
    scale = torch.tensor([2.0 / max(in_w - 1, 1), 2.0 / max(in_h - 1, 1)], device=device)
    return coords * scale


def _intensity(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    s = config.strength
    batch, device = image.shape[0], image.device
    shape = (batch, 1, 1, 1)
    if config.invert > 0:
        flip = torch.rand(shape, generator=generator, device=device) < config.invert * min(s, 1.0)
        image = torch.where(flip, 1.0 - image, image)
    if config.gamma > 0:
        gamma = torch.exp(_uniform(shape, -1, 1, generator, device) * config.gamma * s)
        # Gamma on the clamped range keeps outliers (values above 1) monotone.
        image = image.clamp(min=0).pow(gamma)
    contrast = 1.0 + _uniform(shape, -1, 1, generator, device) * config.contrast * s
    brightness = _uniform(shape, -1, 1, generator, device) * config.brightness * s
    mean = image.mean(dim=(-2, -1), keepdim=True)
    image = (image - mean) * contrast + mean + brightness
    if config.noise > 0:
        level = _uniform(shape, 0, 1, generator, device) * config.noise * s
        image = image + level * torch.randn(image.shape, generator=generator, device=device)
    return image


def augment_batch(
    image: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    out_size: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deform a batch of windows and cut centered patches of ``out_size`` from them.

    Args:
        image: ``(batch, channels, H, W)`` float.
        target: ``(batch, H, W)`` class indices (any integer dtype).
        weights: ``(batch, H, W)`` float weight map.
        mask: ``(batch, H, W)`` annotated pixels (bool or 0/1).
        out_size: Height and width of the returned patches (at most ``(H, W)``).
        config: Augmentation strengths.
        generator: Random generator on the tensors' device.

    Returns:
        ``(image, target, weights, mask)`` patches; target is int64, mask is bool.
    """
    batch, _, in_h, in_w = image.shape
    grid = sampling_grid(batch, out_size, (in_h, in_w), config, generator, image.device)
    image = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    weights = F.grid_sample(
        weights[:, None].float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )[:, 0]
    nearest = F.grid_sample(
        torch.stack([target.float(), mask.float()], dim=1),
        grid,
        mode="nearest",
        padding_mode="reflection",
        align_corners=True,
    )
    target = nearest[:, 0].round().long()
    mask = nearest[:, 1] > 0.5
    if config.strength > 0:
        image = _intensity(image, config, generator)
    return image, target, weights, mask
