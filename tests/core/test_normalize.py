"""Percentile normalization and the (planes, channels, height, width) layout."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_unet.core.errors import InputError, InputWarning
from napari_unet.core.normalize import Normalization, as_planes


def _image(dtype, shape=(1, 64, 80), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low, high = max(info.min, -3000), min(info.max, 60000)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    return (rng.normal(100.0, 30.0, size=shape)).astype(dtype)


# --- Normalization -------------------------------------------------------------------



@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 7), (2, 257, 131)])
@pytest.mark.parametrize("spread", [3, 300, 65535])
def test_8_and_16_bit_planes_normalize_as_their_float_copy(dtype, shape, spread):
    # Integer planes take their percentiles from a histogram instead of a sort.
    spread = min(spread, np.iinfo(dtype).max)
    image = np.random.default_rng(spread).integers(0, spread, size=shape, endpoint=True).astype(dtype)
    for low, high in [(1.0, 99.8), (0.0, 100.0), (13.7, 50.0)]:
        normalization = Normalization(low, high)
        expected = normalization(image.astype(np.float64))
        np.testing.assert_allclose(normalization(image), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize(("low", "high"), [(1.0, 99.8), (0.0, 100.0), (10.0, 60.0)])
def test_percentiles_map_to_zero_and_one(dtype, low, high):
    image = _image(dtype)
    out = Normalization(low, high)(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    lo, hi = np.percentile(out, [low, high])
    assert lo == pytest.approx(0.0, abs=1e-5)
    assert hi == pytest.approx(1.0, abs=1e-5)
    # An affine map: the order of the pixels is kept.
    flat_in, flat_out = image.ravel().astype(np.float64), out.ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= -1e-6)


def test_min_max_normalization_is_exact():
    image = np.array([[[10, 20], [30, 50]]], np.uint8)
    out = Normalization(0, 100)(image)
    np.testing.assert_allclose(out, [[[0.0, 0.25], [0.5, 1.0]]], atol=1e-7)


def test_every_plane_and_channel_is_normalized_on_its_own():
    rng = np.random.default_rng(1)
    planes = np.stack([
        np.stack([rng.random((20, 30)) * 10, rng.random((20, 30)) * 5000 + 100]),
        np.stack([rng.random((20, 30)) + 7, rng.random((20, 30)) * 3]),
    ]).astype(np.float32)  # (2 planes, 2 channels, 20, 30)
    out = Normalization(0, 100)(planes)
    assert out.shape == planes.shape
    for plane in out:
        for channel in plane:
            assert channel.min() == pytest.approx(0.0, abs=1e-6)
            assert channel.max() == pytest.approx(1.0, abs=1e-6)


def test_scaling_the_input_does_not_change_the_output():
    image = _image(np.float32)
    normalize = Normalization()
    np.testing.assert_allclose(normalize(image), normalize(image * 13.0 + 250.0), atol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("value", [0, 7, 255])
def test_flat_images_do_not_divide_by_zero(dtype, value):
    image = np.full((2, 1, 16, 16), value, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings either
        out = Normalization()(image)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, 0.0)


def test_mostly_flat_image_with_a_few_bright_pixels():
    image = np.zeros((1, 100, 100), np.uint16)
    image[0, :2, :2] = 1000  # fewer pixels than the high percentile sees
    out = Normalization(1.0, 99.8)(image)
    assert np.isfinite(out).all()
    assert out[0, 50, 50] == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_warn_are_ignored_and_set_to_zero(bad):
    image = _image(np.float32, shape=(1, 40, 40))
    clean = Normalization(0, 100)(image)
    spoiled = image.copy()
    spoiled[0, 5, 5] = bad
    # Make the spoiled pixel one that was neither minimum nor maximum.
    assert clean[0, 5, 5] not in (0.0, 1.0)
    with pytest.warns(InputWarning, match="NaN or infinite"):
        out = Normalization(0, 100)(spoiled)
    assert np.isfinite(out).all()
    assert out[0, 5, 5] == 0.0
    keep = np.ones(out.shape, bool)
    keep[0, 5, 5] = False
    np.testing.assert_allclose(out[keep], clean[keep], atol=1e-6)


def test_non_finite_pixels_warn_once_for_many_planes():
    image = _image(np.float32, shape=(5, 1, 20, 20))
    image[:, 0, 0, 0] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Normalization()(image)
    assert sum(issubclass(w.category, InputWarning) for w in caught) == 1


def test_a_plane_without_finite_pixels_is_an_input_error():
    image = _image(np.float32, shape=(2, 1, 10, 10))
    image[1] = np.nan
    with pytest.raises(InputError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Normalization()(image)


def test_the_input_array_is_not_modified():
    image = _image(np.float32)
    image[0, 0, 0] = np.nan
    before = image.copy()
    with pytest.warns(InputWarning):
        Normalization()(image)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(("low", "high"), [(50, 50), (60, 40), (-1, 99), (1, 101)])
def test_bad_percentiles_raise_value_error(low, high):
    with pytest.raises(ValueError):
        Normalization(low, high)


def test_normalization_round_trip():
    normalization = Normalization(2.5, 97.0)
    assert Normalization.from_dict(normalization.to_dict()) == normalization
    # Without inversion the file says nothing of it, as files did before it existed.
    assert normalization.to_dict() == {"low_percentile": 2.5, "high_percentile": 97.0, "colour": "luminance"}
    inverted = Normalization(2.5, 97.0, invert=True)
    assert Normalization.from_dict(inverted.to_dict()) == inverted
    with pytest.raises(ValueError, match="true or false"):
        Normalization(invert="yes")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_an_inverted_normalization_is_one_minus_the_plain_one(dtype):
    image = _image(dtype, shape=(2, 1, 33, 47))
    plain, inverted = Normalization()(image), Normalization(invert=True)(image)
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)
    # Dark objects on a bright background read as bright objects on a dark one.
    dark_on_bright = np.full((1, 8, 8), 200, np.uint8)
    dark_on_bright[0, 2:5, 2:5] = 20
    scaled = Normalization(0, 100, invert=True)(dark_on_bright)
    assert scaled[0, 3, 3] == pytest.approx(1.0) and scaled[0, 0, 0] == pytest.approx(0.0)


# --- as_planes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "planes", "stack_shape"),
    [
        ((30, 40), (1, 1, 30, 40), ()),
        ((5, 30, 40), (5, 1, 30, 40), (5,)),
        ((2, 3, 30, 40), (6, 1, 30, 40), (2, 3)),
        ((1, 30, 40), (1, 1, 30, 40), (1,)),
        ((4, 4, 3), (4, 1, 4, 3), (4,)),  # too small to be RGB: a stack of 4x3 planes
        ((3, 30, 40), (3, 1, 30, 40), (3,)),  # three leading planes are a stack, not colour
    ],
)
def test_one_channel_layouts(shape, planes, stack_shape):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, stack = as_planes(image, 1)
    assert out.shape == planes and stack == stack_shape
    np.testing.assert_array_equal(out.reshape(shape), image)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_into_one_channel_warns_and_takes_the_luminance(channels):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(20, 30, channels)).astype(np.uint8)
    with pytest.warns(InputWarning, match="gray"):
        out, stack = as_planes(rgb, 1)
    assert out.shape == (1, 1, 20, 30) and stack == ()
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)  # alpha is dropped


def test_rgb_stack_into_one_channel():
    stack = np.zeros((4, 20, 30, 3), np.uint8)
    stack[2, ..., 1] = 100
    with pytest.warns(InputWarning):
        out, stack_shape = as_planes(stack, 1)
    assert out.shape == (4, 1, 20, 30) and stack_shape == (4,)
    assert out[2].max() == pytest.approx(58.7, rel=1e-4) and out[1].max() == 0


@pytest.mark.parametrize(
    ("shape", "channel_axis", "in_channels", "planes", "stack_shape"),
    [
        ((3, 20, 30), 0, 3, (1, 3, 20, 30), ()),
        ((20, 30, 3), -1, 3, (1, 3, 20, 30), ()),
        ((20, 30, 2), 2, 2, (1, 2, 20, 30), ()),
        ((5, 2, 20, 30), 1, 2, (5, 2, 20, 30), (5,)),
        ((2, 5, 20, 30), 0, 2, (5, 2, 20, 30), (5,)),
        ((5, 20, 30, 2), -1, 2, (5, 2, 20, 30), (5,)),
    ],
)
def test_channel_axis_given(shape, channel_axis, in_channels, planes, stack_shape):
    image = np.random.default_rng(3).random(shape).astype(np.float32)
    out, stack = as_planes(image, in_channels, channel_axis)
    assert out.shape == planes and stack == stack_shape
    expected = np.moveaxis(image, channel_axis, -3).reshape(planes)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("shape", "in_channels", "planes", "stack_shape", "source"),
    [
        ((2, 20, 30), 2, (1, 2, 20, 30), (), 0),
        ((4, 2, 20, 30), 2, (4, 2, 20, 30), (4,), 1),
        ((3, 5, 20, 30), 3, (5, 3, 20, 30), (5,), 0),  # the first axis of the right length
        ((20, 30, 3), 3, (1, 3, 20, 30), (), 2),  # RGB into a three-channel model
    ],
)
def test_multi_channel_model_finds_its_channel_axis(shape, in_channels, planes, stack_shape, source):
    image = np.random.default_rng(4).random(shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, stack = as_planes(image, in_channels)
    assert out.shape == planes and stack == stack_shape
    np.testing.assert_array_equal(out, np.moveaxis(image, source, -3).reshape(planes))


def test_channels_last_two_channel_image_needs_the_channel_axis():
    # The last two axes are always height and width, so (H, W, 2) has no channel axis.
    with pytest.raises(InputError, match="2 channels"):
        as_planes(np.zeros((20, 30, 2), np.float32), 2)
    out, _ = as_planes(np.zeros((20, 30, 2), np.float32), 2, channel_axis=-1)
    assert out.shape == (1, 2, 20, 30)


@pytest.mark.parametrize(
    ("shape", "in_channels", "channel_axis"),
    [
        ((3, 20, 30), 2, None),
        ((20, 30), 2, None),
        ((20, 30, 3), 2, None),  # looks like RGB, but the model takes two channels
        ((20, 30, 5), 1, -1),
        ((5, 20, 30), 3, 0),
        ((2, 20, 30), 1, 0),
        ((20, 30), 1, 0),  # a channel axis needs three axes
        ((20, 30, 3), 3, 5),  # no such axis
        ((20, 30, 3), 3, -4),
    ],
)
def test_channels_that_do_not_fit_are_an_input_error(shape, in_channels, channel_axis):
    with pytest.raises(InputError):
        as_planes(np.zeros(shape, np.float32), in_channels, channel_axis)


@pytest.mark.parametrize(
    "image",
    [
        np.array([["a", "b"], ["c", "d"]]),
        np.array([[1, 2], [3, 4]], dtype=object),
        np.zeros((4, 4), np.complex64),
        np.zeros((4, 4), "datetime64[s]"),
    ],
    ids=["str", "object", "complex", "datetime"],
)
def test_non_numeric_pixels_are_an_input_error(image):
    with pytest.raises(InputError, match="pixel values"):
        as_planes(image, 1)


@pytest.mark.parametrize("shape", [(5,), (), (0, 5), (5, 0), (3, 0, 4)])
def test_too_few_axes_or_empty_images_are_an_input_error(shape):
    with pytest.raises(InputError):
        as_planes(np.zeros(shape, np.float32), 1)


def test_boolean_images_become_numbers():
    image = np.zeros((10, 12), bool)
    image[3, 4] = True
    out, _ = as_planes(image, 1)
    assert np.issubdtype(out.dtype, np.number)
    assert out[0, 0, 3, 4] == 1 and out.sum() == 1


def test_channels_last_of_a_multichannel_model_need_their_axis_and_the_error_says_so():
    image = np.random.default_rng(0).random((32, 40, 2)).astype(np.float32)
    with pytest.raises(InputError, match="channel_axis=-1"):
        as_planes(image, 2)
    planes, stack_shape = as_planes(image, 2, channel_axis=-1)
    assert planes.shape == (1, 2, 32, 40) and stack_shape == ()


# --- IntensityRange ------------------------------------------------------------------


def test_an_intensity_range_maps_its_ends_to_0_and_1_in_every_plane():
    from napari_unet.core.normalize import IntensityRange

    planes = np.array([[[[100, 300], [500, 900]]], [[[100, 100], [100, 120]]]], np.uint16)  # a bright and a dim plane
    scaled = IntensityRange(100, 500)(planes)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[0, 0], [[0, 0.5], [1, 2]])
    np.testing.assert_allclose(scaled[1, 0], [[0, 0], [0, 0.05]])  # the dim plane stays dim, not stretched


def test_an_intensity_range_keeps_the_models_inversion():
    from napari_unet.core.normalize import normalization_for

    scale = normalization_for(Normalization(invert=True), (100, 500))
    np.testing.assert_allclose(scale(np.array([[[100, 300, 500]]], np.uint16)), [[[1, 0.5, 0]]])
    assert normalization_for(Normalization(), (100, 500))(np.array([[[100.0]]]))[0, 0, 0] == 0


def test_an_intensity_range_treats_nan_as_background_with_a_warning():
    from napari_unet.core.normalize import IntensityRange

    with pytest.warns(InputWarning, match="NaN"):
        scaled = IntensityRange(0, 10)(np.array([[[5.0, np.nan]]], np.float32))
    np.testing.assert_allclose(scaled, [[[0.5, 0.0]]])
    with pytest.raises(InputError, match="no finite"):
        IntensityRange(0, 10)(np.full((1, 2, 2), np.nan))


@pytest.mark.parametrize("low, high, said", [
    (5, 1, "the lower first .got 5 and 1"), (3, 3, "a lower and a higher number .got 3 twice"),
    (0, float("nan"), "two finite numbers .got 0 and nan"), (float("-inf"), 1, "two finite numbers"),
])
def test_an_intensity_range_needs_two_finite_numbers_the_lower_first(low, high, said):
    from napari_unet.core.normalize import IntensityRange

    with pytest.raises(InputError, match=said):
        IntensityRange(low, high)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_range_of_a_stack_is_its_percentiles_over_all_planes(dtype):
    stack = _image(dtype, shape=(3, 20, 30))
    low, high = Normalization(2.0, 98.0).range_of(stack)
    np.testing.assert_allclose((low, high), np.percentile(stack.astype(np.float64), [2.0, 98.0]), rtol=1e-5)
    # A flat stack keeps a range (it stays flat), and NaN is left out.
    assert Normalization().range_of(np.full((2, 4, 4), 7, dtype)) == (7.0, 8.0)
    with_nan = stack.astype(np.float32)
    with_nan[0, 0, 0] = np.nan
    assert np.isfinite(Normalization().range_of(with_nan)).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_percentiles_counted_in_parts_equal_numpys(dtype, monkeypatch):
    from napari_unet.core import normalize

    # A stack counted a part at a time, as a whole 100 x 2048 x 2048 stack is, without an int64 copy of it.
    monkeypatch.setattr(normalize, "_COUNTED_AT_ONCE", 1000)
    stack = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, (3, 50, 70)).astype(dtype)
    np.testing.assert_allclose(normalize._integer_percentiles(stack, (1.0, 99.8)), np.percentile(stack, (1.0, 99.8)))


@pytest.mark.parametrize("values", [
    np.random.default_rng(1).normal(0, 1, (4, 30, 30)),  # either sign around zero, float64
    np.random.default_rng(2).exponential(500, (3, 25, 25)).astype(np.float32),  # a long bright tail
    np.random.default_rng(3).integers(-70000, 70000, (2, 20, 20)).astype(np.int32),
    np.array([[[-0.0, 0.0, 1e-30, -1e-30, 3e38, -3e38]]], np.float32),
])
def test_floating_point_percentiles_are_numpys_counted_in_two_passes_over_the_planes(values, monkeypatch):
    from napari_unet.core import normalize as normalize_module

    monkeypatch.setattr(normalize_module, "_COUNTED_AT_ONCE", 97)  # in parts, as a large plane is
    as_float32 = values.astype(np.float32)
    for percentiles in ((1.0, 99.8), (0.0, 50.0, 100.0), (37.5,)):
        counted = normalize_module._float_percentiles(list(values), percentiles)
        np.testing.assert_allclose(counted, np.percentile(as_float32.astype(np.float64), percentiles), rtol=1e-6,
                                   atol=1e-45)
    with pytest.raises(InputError, match="no finite pixel"):
        normalize_module._float_percentiles([np.full((3, 3), np.nan, np.float32)], (1.0,))
