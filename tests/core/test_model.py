"""The U-Net: shapes for both paddings, size arithmetic, context, initialization, config."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from napari_unet.core.model import ChannelsLastMaxPool, NetworkConfig, UNet, scratch_network_config

# Tiny convolutions run faster on one thread than on several competing ones.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(**settings) -> UNet:
    return UNet(NetworkConfig(**settings))


def _forward(net: UNet, height: int, width: int, batch: int = 1) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.randn(batch, net.config.in_channels, height, width))


# --- output shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "height", "width"),
    [(4, 48, 80), (4, 16, 16), (2, 12, 20), (3, 40, 24), (1, 6, 2)],
)
def test_same_padding_keeps_odd_multiples_of_the_pooling_size(depth, height, width):
    net = _net(depth=depth, base_width=2, padding="same")
    assert height % net.size_multiple == 0 and width % net.size_multiple == 0
    out = _forward(net, height, width, batch=2)
    assert out.shape == (2, 2, height, width)
    assert net.output_size(height) == height and net.output_size(width) == width


def test_valid_padding_reproduces_the_papers_572_to_388():
    net = _net(depth=4, base_width=2, padding="valid")
    assert net.output_size(572) == 388
    assert net.valid_input_size(572) == 572
    out = _forward(net, 572, 572)
    assert out.shape == (1, 2, 388, 388)


@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 2), (2, 3), (3, 2)])
def test_channels_and_classes(in_channels, num_classes):
    net = _net(depth=2, base_width=4, in_channels=in_channels, num_classes=num_classes)
    out = _forward(net, 16, 24, batch=3)
    assert out.shape == (3, num_classes, 16, 24)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_same_padding_rejects_sizes_off_the_pooling_grid():
    net = _net(depth=3, base_width=2)
    for size in (1, 7, 9, 20, 47):
        with pytest.raises(ValueError):
            net.output_size(size)


# --- size arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_same_padding_valid_input_size_is_the_next_multiple(depth):
    net = _net(depth=depth, base_width=2)
    multiple = 2**depth
    assert net.size_multiple == multiple
    for wanted in range(1, 70):
        size = net.valid_input_size(wanted)
        assert size % multiple == 0
        assert wanted <= size < wanted + multiple
        assert net.output_size(size) == size


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_valid_padding_valid_input_size_is_the_smallest_accepted_size(depth):
    net = _net(depth=depth, base_width=2, padding="valid")
    accepted = []
    for size in range(1, 260):
        try:
            accepted.append((size, net.output_size(size)))
        except ValueError:
            pass
    assert len(accepted) > 3
    sizes = [size for size, _ in accepted]
    # Accepted sizes are evenly spaced by 2**depth, and the output shrinks by a constant.
    assert {b - a for a, b in zip(sizes, sizes[1:])} == {2**depth}
    assert len({size - out for size, out in accepted}) == 1
    for wanted in range(1, 250):
        size = net.valid_input_size(wanted)
        assert size == min(s for s in sizes if s >= wanted)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_valid_padding_output_size_matches_the_real_network(depth):
    net = _net(depth=depth, base_width=2, padding="valid")
    first = net.valid_input_size(1)
    for height, width in [(first, first), (first + 2**depth, first + 3 * 2**depth)]:
        out = _forward(net, height, width)
        assert out.shape[-2:] == (net.output_size(height), net.output_size(width))


def test_valid_padding_rejects_sizes_that_do_not_fit():
    net = _net(depth=2, base_width=2, padding="valid")
    good = net.valid_input_size(40)
    with pytest.raises(ValueError):
        net.output_size(good + 1)
    with pytest.raises(ValueError):
        net.output_size(8)  # too small to survive the convolutions


# --- context -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_valid_context_is_half_of_what_the_network_removes(depth):
    net = _net(depth=depth, base_width=2, padding="valid")
    for wanted in (1, 100, 333):
        size = net.valid_input_size(wanted)
        assert size - net.output_size(size) == 2 * net.context
    if depth == 4:
        assert net.context == (572 - 388) // 2


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_same_context_covers_the_receptive_field_on_the_pooling_grid(depth):
    net = _net(depth=depth, base_width=4, batch_norm=False).eval()
    multiple = net.size_multiple
    assert net.context % multiple == 0
    # Gradient of one central output pixel: nonzero only inside its receptive field.
    size = 2 * net.context + 4 * multiple
    image = torch.randn(1, 1, size, size, requires_grad=True)
    center = size // 2
    net(image)[0, 1, center, center].backward()
    rows, cols = torch.nonzero(image.grad[0, 0], as_tuple=True)
    reach = max(
        center - rows.min().item(), rows.max().item() - center,
        center - cols.min().item(), cols.max().item() - center,
    )
    assert 0 < reach <= net.context
    # The documented radius: 5 * 2**level per level plus the bottom's two convolutions.
    radius = sum(5 * 2**level for level in range(depth)) + 2 * 2**depth
    assert reach <= radius
    assert net.context == math.ceil(radius / multiple) * multiple


def test_same_context_values():
    assert _net(depth=2, base_width=2).context == 24
    assert _net(depth=4, base_width=2).context == 112


# --- initialization ------------------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [True, False])
def test_he_initialization_of_wide_convolutions(batch_norm):
    net = _net(depth=1, base_width=64, batch_norm=batch_norm)
    checked = 0
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.weight.numel() >= 30_000:
            fan_in = module.weight[0].numel()
            expected = math.sqrt(2.0 / fan_in)
            std = module.weight.std().item()
            assert std == pytest.approx(expected, rel=0.05)
            assert abs(module.weight.mean().item()) < 0.05 * expected
            checked += 1
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert checked >= 3


def test_reset_parameters_redraws_the_weights():
    net = _net(depth=1, base_width=16)
    conv = net.down[0][0]
    with torch.no_grad():
        conv.weight.fill_(3.0)
        net.head.bias.fill_(1.0)
    net.reset_parameters()
    assert not torch.all(conv.weight == 3.0)
    assert torch.count_nonzero(net.head.bias) == 0


# --- batch norm and dropout ----------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_batch_norm_switch_changes_the_modules(depth):
    with_bn = _net(depth=depth, base_width=4, batch_norm=True)
    without = _net(depth=depth, base_width=4, batch_norm=False)
    double_convs = 2 * depth + 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 2 * double_convs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    def convs(net):
        return [m for m in net.modules() if isinstance(m, nn.Conv2d) and m is not net.head]

    # A convolution followed by batch norm has no bias of its own.
    assert all(conv.bias is None for conv in convs(with_bn))
    assert all(conv.bias is not None for conv in convs(without))
    assert len(convs(with_bn)) == len(convs(without)) == 2 * double_convs


def test_dropout_sits_at_the_end_of_the_contracting_path():
    net = _net(depth=2, base_width=4, dropout=0.5)
    assert isinstance(net.dropout, nn.Dropout2d) and net.dropout.p == 0.5
    seen = []
    net.dropout.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    _forward(net, 32, 48)
    # It sees the bottom's output: the widest features at the coarsest resolution.
    assert seen == [torch.Size([1, 4 * 2**2, 32 // 4, 48 // 4])]
    assert sum(isinstance(m, nn.Dropout2d) for m in net.modules()) == 1


def test_dropout_is_active_in_training_only():
    net = _net(depth=2, base_width=4, dropout=0.5, batch_norm=False)
    image = torch.randn(1, 1, 32, 32)
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(image), net(image))
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(image), net(image))


def test_no_dropout_means_identity():
    net = _net(depth=2, base_width=4, dropout=0.0, batch_norm=False)
    assert isinstance(net.dropout, nn.Identity)
    assert not any(isinstance(m, nn.Dropout2d) for m in net.modules())
    image = torch.randn(1, 1, 16, 16)
    net.train()
    with torch.no_grad():
        assert torch.equal(net(image), net(image))


# --- configuration -------------------------------------------------------------------


def test_default_config():
    net = UNet()
    assert net.config == NetworkConfig()
    assert net.config.depth == 4 and net.config.padding == "same"


def test_a_network_trained_from_scratch_is_lighter_on_a_cpu():
    assert scratch_network_config(torch.device("cuda")) == NetworkConfig()
    assert scratch_network_config(torch.device("mps")) == NetworkConfig()
    assert scratch_network_config(torch.device("cpu")) == NetworkConfig(depth=3, base_width=16)
    # What the user gives wins; the rest is the device's.
    assert scratch_network_config(torch.device("cpu"), depth=5, num_classes=3, padding="valid") == NetworkConfig(
        depth=5, base_width=16, num_classes=3, padding="valid")
    assert scratch_network_config(torch.device("cuda"), base_width=8) == NetworkConfig(base_width=8)


@pytest.mark.parametrize(
    "config",
    [
        NetworkConfig(),
        NetworkConfig(in_channels=3, num_classes=3, depth=2, base_width=8, batch_norm=False,
                      dropout=0.25, padding="valid"),
    ],
)
def test_config_round_trip(config):
    values = config.to_dict()
    assert set(values) == {"in_channels", "num_classes", "depth", "base_width", "batch_norm",
                           "dropout", "padding"}
    assert NetworkConfig.from_dict(values) == config
    # The model file stores it as JSON.
    assert NetworkConfig.from_dict(json.loads(json.dumps(values))) == config


@pytest.mark.parametrize(
    "settings",
    [
        {"padding": "full"},
        {"padding": "SAME"},
        {"num_classes": 1},
        {"num_classes": 4},
        {"depth": 0},
        {"base_width": 0},
        {"in_channels": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
    ],
)
def test_bad_configs_raise_value_error(settings):
    with pytest.raises(ValueError):
        NetworkConfig(**settings)


def test_unknown_settings_raise_value_error():
    with pytest.raises(ValueError, match="unknown"):
        NetworkConfig.from_dict({"depth": 2, "width": 8})


def test_config_is_immutable():
    config = NetworkConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 2  # type: ignore[misc]


# --- training ------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_gradients_reach_every_parameter(padding):
    net = _net(depth=2, base_width=4, padding=padding, dropout=0.2).train()
    size = net.valid_input_size(44)
    image = torch.randn(2, 1, size, size)
    logits = net(image)
    target = torch.randint(0, 2, logits.shape[:1] + logits.shape[2:])
    nn.functional.cross_entropy(logits, target).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name



def _trained_looking(network: UNet) -> UNet:
    """``network`` with batch-norm statistics and biases that are not the initial ones, as after training."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return network.eval()


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_cpu_inference_copy_computes_what_the_network_does(padding, batch_norm):
    from napari_unet.core import onednn

    network = _trained_looking(UNet(NetworkConfig(depth=3, base_width=8, padding=padding, batch_norm=batch_norm)))
    size = network.valid_input_size(61)
    image = torch.rand(2, 1, size, size + 8 if padding == "same" else size)
    copy = network.inference_copy(torch.device("cpu"))
    # Where this PyTorch has oneDNN's fused convolutions (x86 and ARM builds do), the copy uses them.
    fused = onednn.available()
    assert any(type(module).__name__ == "_FusedUpConcat" for module in copy.modules()) == fused
    with torch.inference_mode():
        expected = network(image)
        torch.testing.assert_close(copy(image.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(network.inference_copy(torch.device("cpu"), fuse=False)(image), expected,
                                   rtol=1e-4, atol=1e-4)


def test_without_a_usable_fused_operator_the_plain_blocks_remain(monkeypatch):
    from napari_unet.core import onednn

    def broken():
        raise RuntimeError("simulated: no such operator in this PyTorch")

    onednn._check.cache_clear()
    monkeypatch.setattr(onednn, "_pointwise", broken)
    try:
        state = torch.random.get_rng_state()
        assert not onednn.available()
        assert torch.equal(torch.random.get_rng_state(), state)  # the check does not move the user's seed
        copy = UNet(NetworkConfig(depth=2, base_width=4)).inference_copy(torch.device("cpu"))
        assert not any("Fused" in type(module).__name__ for module in copy.modules())
    finally:
        onednn._check.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 16, 8, 6), (1, 3, 2, 2), (1, 33, 10, 4)])
def test_channels_last_pooling_gives_max_pool_values(dtype, shape):
    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float("nan")  # a NaN wins its window, as in max_pool2d
    pooled = ChannelsLastMaxPool()(x)
    expected = nn.functional.max_pool2d(x, 2)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0, equal_nan=True)
    assert pooled.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("x", [torch.randn(1, 4, 7, 6).contiguous(memory_format=torch.channels_last),
                               torch.randn(1, 4, 6, 6)], ids=["odd height", "channels first"])
def test_channels_last_pooling_leaves_other_inputs_to_max_pool(x, monkeypatch):
    expected = nn.functional.max_pool2d(x, 2)
    calls = []
    monkeypatch.setattr(nn.functional, "max_pool2d", lambda *args: calls.append(args) or expected)
    assert ChannelsLastMaxPool()(x) is expected and len(calls) == 1


def test_the_cpu_inference_copy_pools_by_maxima():
    copy = UNet(NetworkConfig(depth=2, base_width=4)).inference_copy(torch.device("cpu"))
    assert isinstance(copy.pool, ChannelsLastMaxPool)
