"""Augmentation: one deformation moves image, target, weights and mask together."""

from __future__ import annotations

import pytest
import torch

from napari_unet.core.augment import AugmentConfig, augment_batch, sampling_grid

# Tiny convolutions run faster on one thread than on several competing ones.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


#: Geometry only: the intensity changes are switched off so the image stays comparable.
GEOMETRY_ONLY = dict(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0, invert=0.0)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coordinate_batch(batch: int, height: int, width: int):
    """Image channels hold each pixel's row and column; the target holds its index.

    Bilinear sampling of a linear function returns the exact sampling position, nearest
    sampling returns the index of the nearest pixel: together they show where each output
    pixel of the image and of the target came from.
    """
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    image = torch.stack([rows, cols]).expand(batch, 2, height, width).clone()
    target = (rows * width + cols).long().expand(batch, height, width).clone()
    weights = rows.expand(batch, height, width).clone()
    mask = (target % 3 == 0).clone()
    return image, target, weights, mask


def _random_batch(batch=4, channels=1, height=48, width=48, classes=3, seed=0):
    generator = _generator(seed)
    image = torch.rand(batch, channels, height, width, generator=generator)
    target = torch.randint(0, classes, (batch, height, width), generator=generator)
    weights = torch.rand(batch, height, width, generator=generator) + 1.0
    mask = torch.rand(batch, height, width, generator=generator) > 0.3
    return image, target, weights, mask


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_image_target_weights_and_mask_move_together(strength, seed):
    height = width = 72
    image, target, weights, mask = _coordinate_batch(6, height, width)
    config = AugmentConfig(strength=strength, **GEOMETRY_ONLY)
    out_image, out_target, out_weights, out_mask = augment_batch(
        image, target, weights, mask, (40, 48), config, _generator(seed)
    )
    position_y, position_x = out_image[:, 0], out_image[:, 1]
    target_y = torch.div(out_target, width, rounding_mode="floor").float()
    target_x = (out_target % width).float()
    # The target pixel is the input pixel nearest to where the image was sampled.
    assert (target_y - position_y).abs().max() <= 0.5 + 1e-3
    assert (target_x - position_x).abs().max() <= 0.5 + 1e-3
    # Weights are interpolated at the same positions as the image.
    torch.testing.assert_close(out_weights, position_y, atol=1e-3, rtol=0)
    # The mask comes from the same pixel as the target.
    assert torch.equal(out_mask, out_target % 3 == 0)
    # The transform is not the identity (else the test would say nothing).
    identity_y = torch.arange(40, dtype=torch.float32)[:, None] + (height - 40) / 2
    assert (position_y - identity_y).abs().mean() > 1.0


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_nearest_sampling_never_invents_labels(strength):
    image, target, weights, mask = _random_batch(batch=8, classes=4)
    target[:, :, :10] = 7  # an unusual value that must survive as itself
    _, out_target, _, out_mask = augment_batch(
        image, target, weights, mask, (40, 40), AugmentConfig(strength=strength), _generator(3)
    )
    assert set(out_target.unique().tolist()) <= set(target.unique().tolist())
    assert out_mask.dtype == torch.bool


def test_image_follows_the_target_within_interpolation_tolerance():
    # Large constant blocks of distinct values in image, target, weights and mask; two
    # more image channels record where each output pixel was sampled.
    height = width = 64
    blocks = torch.arange(64).reshape(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1)
    coordinates, *_ = _coordinate_batch(4, height, width)
    target = blocks[None].expand(4, height, width).clone()
    image = torch.cat([target[:, None].float(), coordinates], dim=1)
    mask = target % 2 == 0
    weights = target.float()
    out_image, out_target, out_weights, out_mask = augment_batch(
        image, target, weights, mask, (48, 48), AugmentConfig(**GEOMETRY_ONLY), _generator(5)
    )
    assert set(out_target.unique().tolist()) <= set(range(64))
    value, y, x = out_image[:, 0], out_image[:, 1], out_image[:, 2]
    # The target is the block at the nearest pixel of the sampled position ...
    nearest = blocks[y.round().long().clamp(0, 63), x.round().long().clamp(0, 63)]
    ties = ((y - y.floor() - 0.5).abs() < 1e-3) | ((x - x.floor() - 0.5).abs() < 1e-3)
    assert torch.equal(out_target[~ties], nearest[~ties])
    # ... and the image lies between the blocks of the four pixels around that position.
    corners = torch.stack([
        blocks[y.floor().long().clamp(0, 63), x.floor().long().clamp(0, 63)],
        blocks[y.ceil().long().clamp(0, 63), x.floor().long().clamp(0, 63)],
        blocks[y.floor().long().clamp(0, 63), x.ceil().long().clamp(0, 63)],
        blocks[y.ceil().long().clamp(0, 63), x.ceil().long().clamp(0, 63)],
    ]).float()
    assert torch.all(value >= corners.min(0).values - 1e-3)
    assert torch.all(value <= corners.max(0).values + 1e-3)
    # Inside the blocks, image and target agree exactly.
    agree = (value - out_target.float()).abs() < 1e-3
    assert agree.float().mean() > 0.6
    torch.testing.assert_close(out_weights, value, atol=1e-4, rtol=0)
    assert torch.equal(out_mask, out_target % 2 == 0)


@pytest.mark.parametrize(("in_size", "out_size"), [((64, 64), (48, 48)), ((50, 70), (30, 40)), ((32, 32), (32, 32))])
def test_strength_zero_is_a_center_crop(in_size, out_size):
    image, target, weights, mask = _random_batch(batch=3, channels=2, height=in_size[0], width=in_size[1])
    out = augment_batch(image, target, weights, mask, out_size, AugmentConfig(strength=0.0), _generator())
    top = (in_size[0] - out_size[0]) // 2
    left = (in_size[1] - out_size[1]) // 2
    crop = (..., slice(top, top + out_size[0]), slice(left, left + out_size[1]))
    torch.testing.assert_close(out[0], image[crop], atol=1e-5, rtol=0)
    assert torch.equal(out[1], target[crop])
    torch.testing.assert_close(out[2], weights[crop], atol=1e-5, rtol=0)
    assert torch.equal(out[3], mask[crop])


def test_same_seed_same_result_other_seed_other_result():
    batch = _random_batch()
    first = augment_batch(*batch, (32, 32), AugmentConfig(invert=0.5), _generator(42))
    second = augment_batch(*batch, (32, 32), AugmentConfig(invert=0.5), _generator(42))
    other = augment_batch(*batch, (32, 32), AugmentConfig(invert=0.5), _generator(43))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[1], other[1])


def test_the_global_torch_seed_does_not_matter():
    batch = _random_batch()
    torch.manual_seed(1)
    first = augment_batch(*batch, (32, 32), AugmentConfig(), _generator(7))
    torch.manual_seed(2)
    second = augment_batch(*batch, (32, 32), AugmentConfig(), _generator(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_every_sample_gets_its_own_deformation():
    image, target, weights, mask = _random_batch(batch=1)
    batch = [t.expand(4, *t.shape[1:]).clone() for t in (image, target, weights, mask)]
    out_image, out_target, _, _ = augment_batch(*batch, (32, 32), AugmentConfig(), _generator(8))
    for index in range(1, 4):
        assert not torch.equal(out_target[0], out_target[index])
        assert not torch.allclose(out_image[0], out_image[index])


def _displacements(config: AugmentConfig, batch=64, out=33, margin=60, seed=0):
    size = out + 2 * margin
    image, target, weights, mask = _coordinate_batch(batch, size, size)
    out_image, *_ = augment_batch(image, target, weights, mask, (out, out), config, _generator(seed))
    identity = torch.arange(out, dtype=torch.float32) + margin
    dy = out_image[:, 0] - identity[:, None]
    dx = out_image[:, 1] - identity[None, :]
    return dy, dx


@pytest.mark.parametrize(("sigma", "strength"), [(10.0, 1.0), (4.0, 1.0), (10.0, 0.5)])
def test_elastic_displacement_has_the_configured_sigma(sigma, strength):
    config = AugmentConfig(strength=strength, elastic_sigma=sigma, elastic_grid=3, rotation=False,
                           flips=False, shift=0.0, scale=0.0, **GEOMETRY_ONLY)
    dy, dx = _displacements(config)
    # With align_corners the coarse grid points land exactly on output pixels 0, 16 and 32.
    nodes = torch.tensor([0, 16, 32])
    at_nodes = torch.cat([dy[:, nodes][:, :, nodes].flatten(), dx[:, nodes][:, :, nodes].flatten()])
    expected = sigma * strength
    assert at_nodes.std().item() == pytest.approx(expected, rel=0.15)
    assert abs(at_nodes.mean().item()) < 0.2 * expected
    # Between the nodes the field is smooth: neighbours move almost alike.
    assert (dy[:, 1:] - dy[:, :-1]).abs().max() < expected


def test_no_elastic_no_rotation_no_zoom_is_a_pure_shift():
    config = AugmentConfig(elastic_sigma=0.0, rotation=False, flips=False, scale=0.0, shift=0.1,
                           **GEOMETRY_ONLY)
    dy, dx = _displacements(config, batch=16)
    # The same shift for every pixel of a sample, at most 10 % of the patch size.
    for sample in range(16):
        assert dy[sample].std() < 1e-3 and dx[sample].std() < 1e-3
    assert dy.abs().max() <= 0.1 * 33 + 1e-3 and dx.abs().max() <= 0.1 * 33 + 1e-3
    assert dy.abs().max() > 0.5


def test_flips_only_mirror_the_patch():
    config = AugmentConfig(elastic_sigma=0.0, rotation=False, flips=True, scale=0.0, shift=0.0,
                           **GEOMETRY_ONLY)
    batch = 32
    image, target, weights, mask = _coordinate_batch(batch, 20, 20)
    out_image, *_ = augment_batch(image, target, weights, mask, (20, 20), config, _generator(9))
    rows = torch.arange(20, dtype=torch.float32)
    flipped_y = flipped_x = 0
    for sample in range(batch):
        y, x = out_image[sample, 0], out_image[sample, 1]
        if torch.allclose(y, rows[:, None].expand(20, 20), atol=1e-4):
            pass
        else:
            torch.testing.assert_close(y, rows.flip(0)[:, None].expand(20, 20), atol=1e-4, rtol=0)
            flipped_y += 1
        if not torch.allclose(x, rows[None].expand(20, 20), atol=1e-4):
            torch.testing.assert_close(x, rows.flip(0)[None].expand(20, 20), atol=1e-4, rtol=0)
            flipped_x += 1
    assert 0 < flipped_y < batch and 0 < flipped_x < batch


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8, torch.int32])
def test_output_shapes_and_dtypes(channels, target_dtype):
    image, target, weights, mask = _random_batch(batch=2, channels=channels, height=40, width=56)
    out_image, out_target, out_weights, out_mask = augment_batch(
        image, target.to(target_dtype), weights, mask.to(torch.uint8), (24, 32), AugmentConfig(), _generator()
    )
    assert out_image.shape == (2, channels, 24, 32) and out_image.dtype == torch.float32
    assert out_target.shape == (2, 24, 32) and out_target.dtype == torch.int64
    assert out_weights.shape == (2, 24, 32) and out_weights.dtype == torch.float32
    assert out_mask.shape == (2, 24, 32) and out_mask.dtype == torch.bool
    assert torch.isfinite(out_image).all() and torch.isfinite(out_weights).all()


def test_sampling_grid_shape_and_range():
    grid = sampling_grid(3, (20, 30), (40, 50), AugmentConfig(strength=0), _generator(), torch.device("cpu"))
    assert grid.shape == (3, 20, 30, 2)
    # A centered crop covers the middle of the normalized [-1, 1] window.
    assert grid[..., 0].min() == pytest.approx(-29 / 49) and grid[..., 0].max() == pytest.approx(29 / 49)
    assert grid[..., 1].min() == pytest.approx(-19 / 39) and grid[..., 1].max() == pytest.approx(19 / 39)


def test_intensity_changes_gray_values_but_not_geometry():
    image, target, weights, mask = _random_batch(batch=4, height=32, width=32)
    plain = AugmentConfig(strength=1.0, **GEOMETRY_ONLY)
    changed = AugmentConfig(strength=1.0)
    a = augment_batch(image, target, weights, mask, (32, 32), plain, _generator(11))
    b = augment_batch(image, target, weights, mask, (32, 32), changed, _generator(11))
    # Same geometry (the intensity draws come after the grid), different gray values.
    assert torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], b[0], atol=1e-3)


def test_invert_flips_gray_values():
    image = torch.full((8, 1, 16, 16), 0.2)
    target = torch.zeros(8, 16, 16, dtype=torch.long)
    config = AugmentConfig(invert=1.0, elastic_sigma=0.0, rotation=False, flips=False, shift=0.0,
                           scale=0.0, brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)
    out_image, *_ = augment_batch(image, target, target.float(), target.bool(), (16, 16), config, _generator())
    torch.testing.assert_close(out_image, torch.full_like(out_image, 0.8))


def test_config_round_trip():
    config = AugmentConfig(strength=0.5, elastic_sigma=3.0, invert=0.25)
    assert AugmentConfig.from_dict(config.to_dict()) == config
