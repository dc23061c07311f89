"""Overlap-tile prediction: equal to a whole-image pass, any size, stacks, channels, progress."""

from __future__ import annotations

import math
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from napari_unet.core import predict as core_predict
from napari_unet.core.bundle import Model
from napari_unet.core.errors import InputError, InputWarning
from napari_unet.core.model import NetworkConfig, UNet
from napari_unet.core.normalize import Normalization
from napari_unet.core.predict import (
    Prediction,
    PredictProgress,
    image_border,
    predict,
    predict_iter,
    predict_probabilities,
)
from napari_unet.core.progress import run_to_end

# Tiny convolutions run faster on one thread than on several competing ones.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _network(padding="same", depth=2, base_width=4, in_channels=1, num_classes=2, seed=0) -> UNet:
    """A network with random He weights and some perturbed BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = UNet(NetworkConfig(in_channels=in_channels, num_classes=num_classes, depth=depth,
                             base_width=base_width, padding=padding))
    generator = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms[::2]:
            norm.running_mean.normal_(0.0, 0.5, generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.normal_(0.0, 0.2, generator=generator)
    return net.eval()


def _model(**settings) -> Model:
    return Model(network=_network(**settings))


def _whole_image(net: UNet, plane: np.ndarray) -> np.ndarray:
    """Reference: mirror-pad by the image border, pad to a valid size, one forward pass, crop."""
    context = image_border(net)
    _, height, width = plane.shape
    padded_h = net.valid_input_size(height + 2 * context)
    padded_w = net.valid_input_size(width + 2 * context)
    mode = "reflect" if min(height, width) > 1 else "edge"
    padded = np.pad(
        plane,
        ((0, 0), (context, padded_h - height - context), (context, padded_w - width - context)),
        mode=mode,
    )
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(np.ascontiguousarray(padded, np.float32))[None])
    probabilities = torch.softmax(logits, dim=1)[0].numpy()
    start = context if probabilities.shape[-1] == padded_w else 0  # "same" keeps the padding
    return probabilities[:, start : start + height, start : start + width]


def _random_plane(shape, channels=1, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 0.3, size=(channels, *shape)).astype(np.float32)


# --- equivalence with a whole-image pass ---------------------------------------------


@pytest.mark.parametrize(
    ("padding", "depth", "tile", "batch_size"),
    [
        ("same", 2, 96, 1),
        ("same", 2, 96, 7),
        ("valid", 2, 96, 1),
        ("valid", 2, 96, 7),
        ("same", 3, 160, 4),
        ("valid", 3, 128, 4),
    ],
)
def test_stitched_tiles_equal_a_whole_image_pass(padding, depth, tile, batch_size):
    net = _network(padding=padding, depth=depth)
    plane = _random_plane((333, 517))
    expected = _whole_image(net, plane)
    steps = []
    tiles = predict_probabilities(net, plane, tile_size=tile, batch_size=batch_size, device="cpu")
    result = run_to_end(tiles, steps.append)
    assert result.shape == (2, 333, 517) and result.dtype == np.float32
    # The image really was cut into several tiles, so the test exercises the stitching.
    assert len(steps) >= 4
    np.testing.assert_allclose(result, expected, atol=2e-5, rtol=0)
    # The probabilities are not trivially flat (the comparison would be vacuous).
    assert expected[1].std() > 1e-3


def test_a_plane_stays_on_the_gpu_only_while_it_takes_a_quarter_of_its_free_memory(monkeypatch):
    from napari_unet.core.predict import _stitching_device

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (16 * 2**20, 80 * 2**30))
    assert _stitching_device(cuda, 2**20) == cuda  # 4 MiB of 16 free
    assert _stitching_device(cuda, 2**20 + 1) == torch.device("cpu")
    assert _stitching_device(torch.device("cpu"), 1) == torch.device("cpu")
    assert _stitching_device(torch.device("mps"), 1) == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("free_bytes", [None, 1024], ids=["stitched on the GPU", "stitched in main memory"])
def test_tiles_predicted_on_a_gpu_equal_a_whole_image_pass(monkeypatch, free_bytes):
    # cuDNN convolves float32 in TF32 by default (10-bit mantissa): tiles and the whole
    # image then differ by up to 1e-3 for reasons that have nothing to do with stitching.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    if free_bytes is not None:  # as if the plane were too large to stay on the GPU
        total = torch.cuda.mem_get_info()[1]
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, total))
    net = _network(depth=3)
    plane = _random_plane((333, 517))
    steps = []
    result = run_to_end(predict_probabilities(net, plane, tile_size=128, batch_size=3, device="cuda", amp=False),
                        steps.append)
    assert len(steps) >= 4
    np.testing.assert_allclose(result, _whole_image(net, plane), atol=1e-4, rtol=0)


def test_labels_are_made_on_the_gpu_only_while_they_take_a_quarter_of_its_free_memory(monkeypatch):
    from napari_unet.core.predict import _POSTPROCESSING_BYTES_PER_PIXEL, _room_to_postprocess

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * _POSTPROCESSING_BYTES_PER_PIXEL * 100, 2**30))
    assert _room_to_postprocess(torch.device("cuda"), (10, 10))
    assert not _room_to_postprocess(torch.device("cuda"), (10, 11))
    assert not _room_to_postprocess(torch.device("cpu"), (1, 1))
    assert not _room_to_postprocess(torch.device("mps"), (1, 1))


def _labels_made_where_the_probabilities_lie(monkeypatch) -> list[type]:
    """Make labels on the probabilities' device as on a GPU with room; lists the kinds of probabilities labelled."""
    kinds = []
    real = core_predict.probabilities_to_labels
    monkeypatch.setattr(core_predict, "_room_to_postprocess", lambda device, shape: True)
    monkeypatch.setattr(core_predict, "probabilities_to_labels",
                        lambda probabilities, *args: kinds.append(type(probabilities)) or real(probabilities, *args))
    return kinds


@pytest.mark.parametrize("diameter", [None, 30.0], ids=["own scale", "rescaled"])
def test_labels_made_where_the_probabilities_lie_are_the_cpus(monkeypatch, nuclei, diameter):
    from napari_unet.core.registry import load_model

    model = load_model("nuclei")
    stack = np.stack([nuclei[0], nuclei[0][::-1]])
    expected = predict(model, stack, diameter=diameter, device="cpu")
    kinds = _labels_made_where_the_probabilities_lie(monkeypatch)
    result = predict(model, stack, diameter=diameter, device="cpu")
    assert kinds == [torch.Tensor] * 2
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.probability, expected.probability, atol=1e-6, rtol=0)
    assert expected.labels[0].max() >= 10


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory (simulated)"),
                                   RuntimeError("an operation this GPU lacks (simulated)")],
                         ids=["out of memory", "other failure"])
def test_labels_are_made_on_the_cpu_when_making_them_on_the_gpu_fails(monkeypatch, nuclei, error):
    from napari_unet.core.registry import load_model

    model = load_model("nuclei")
    stack = np.stack([nuclei[0], nuclei[0][::-1]])
    expected = predict(model, stack, device="cpu").labels
    monkeypatch.setattr(core_predict, "_labels_failed_on", set())
    kinds = _labels_made_where_the_probabilities_lie(monkeypatch)
    real = core_predict.probabilities_to_labels

    def failing_on_the_device(probabilities, *args):
        if isinstance(probabilities, torch.Tensor):
            kinds.append(torch.Tensor)
            raise error
        return real(probabilities, *args)

    monkeypatch.setattr(core_predict, "probabilities_to_labels", failing_on_the_device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(predict(model, stack, device="cpu").labels, expected)
    said = [str(warning.message) for warning in caught if warning.category is RuntimeWarning]
    if isinstance(error, torch.OutOfMemoryError):
        assert kinds == [torch.Tensor, np.ndarray] * 2  # tried on the device each time, then made on the CPU
        assert said == []  # nothing the user must know: the same labels, later
    else:
        assert kinds == [torch.Tensor, np.ndarray, np.ndarray]  # not tried again after such a failure
        assert said == ["labels are made on the CPU: making them on the CPU failed "
                        "(an operation this GPU lacks (simulated))"]


def test_labels_made_on_the_gpu_are_waited_for_before_the_next_planes_tiles(monkeypatch, nuclei):
    # The next plane's tiles are sized to the GPU's free memory, which the labels would share.
    from napari_unet.core.registry import load_model

    model = load_model("nuclei")
    events = []
    model.network.register_forward_pre_hook(lambda module, inputs: events.append("network"))
    _labels_made_where_the_probabilities_lie(monkeypatch)
    real = core_predict.probabilities_to_labels

    def slow_labels(*args):  # long enough for the next plane to start, were it allowed to
        time.sleep(0.1)
        labels = real(*args)
        events.append("labels")
        return labels

    monkeypatch.setattr(core_predict, "probabilities_to_labels", slow_labels)
    predict(model, np.stack([nuclei[0]] * 3), device="cpu")
    assert events == ["network", "labels"] * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_labels_made_on_a_gpu_are_those_of_its_probabilities_on_the_cpu(monkeypatch, nuclei):
    from napari_unet.core.registry import load_model

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # the same probabilities twice
    model = load_model("nuclei")
    stack = np.stack([np.tile(nuclei[0], (4, 4)), np.tile(nuclei[0][::-1], (4, 4))])
    made_on = []
    real = core_predict.probabilities_to_labels
    monkeypatch.setattr(core_predict, "probabilities_to_labels",
                        lambda p, *args: made_on.append(getattr(p, "device", "numpy")) or real(p, *args))
    on_gpu = predict(model, stack, device="cuda")
    assert [str(device) for device in made_on] == ["cuda:0"] * 2
    monkeypatch.setattr(core_predict, "_room_to_postprocess", lambda device, shape: False)
    on_cpu = predict(model, stack, device="cuda")
    assert made_on[2:] == ["numpy"] * 2
    np.testing.assert_array_equal(on_gpu.labels, on_cpu.labels)
    np.testing.assert_allclose(on_gpu.probability, on_cpu.probability, atol=1e-6, rtol=0)
    assert on_cpu.labels[0].max() >= 100


def test_results_do_not_depend_on_the_batch_size():
    net = _network()
    plane = _random_plane((90, 70), seed=3)
    results = [
        run_to_end(predict_probabilities(net, plane, tile_size=64, batch_size=b, device="cpu"))
        for b in (1, 2, 5, 100)
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-5, rtol=0)


def test_predict_iter_probability_is_the_normalized_whole_image_pass():
    model = _model()
    image = (np.random.default_rng(4).random((70, 91)) * 4000).astype(np.uint16)
    normalized = model.normalization(image[np.newaxis])
    expected = 1.0 - _whole_image(model.network, normalized)[0]
    result = predict(model, image, tile_size=64, batch_size=3, device="cpu")
    np.testing.assert_allclose(result.probability, expected, atol=2e-5, rtol=0)


def test_progress_counts_tile_batches():
    net = _network()
    plane = _random_plane((100, 130))
    single = list(predict_probabilities(net, plane, tile_size=64, batch_size=1, device="cpu"))
    tiles = len(single)
    assert tiles > 4
    assert single == [(done, tiles) for done in range(1, tiles + 1)]
    batched = list(predict_probabilities(net, plane, tile_size=64, batch_size=3, device="cpu"))
    total = math.ceil(tiles / 3)
    assert batched == [(done, total) for done in range(1, total + 1)]
    # By default a CPU takes one tile per pass.
    assert list(predict_probabilities(net, plane, tile_size=64, device="cpu")) == single


# --- small images --------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (1, 9), (9, 1), (2, 3), (40, 3), (50, 70)])
def test_images_smaller_than_a_tile_or_the_network_are_padded(padding, shape):
    model = _model(padding=padding)
    image = (np.random.default_rng(5).random(shape) * 255).astype(np.uint8)
    progress = []
    result = predict(model, image, on_progress=progress.append, tile_size=512, device="cpu")
    assert result.labels.shape == shape and result.probability.shape == shape
    assert np.isfinite(result.probability).all()
    assert progress == [PredictProgress(0, 1, 1, 1)]  # one tile


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("shape", [(5, 7), (3, 30), (17, 2)])
def test_tiny_images_equal_a_whole_image_pass(padding, shape):
    net = _network(padding=padding)
    plane = _random_plane(shape, seed=6)
    result = run_to_end(predict_probabilities(net, plane, tile_size=96, device="cpu"))
    np.testing.assert_allclose(result, _whole_image(net, plane), atol=2e-5, rtol=0)
    np.testing.assert_allclose(result.sum(axis=0), 1.0, atol=1e-5)


def test_tile_size_smaller_than_the_context_still_works():
    net = _network()
    plane = _random_plane((60, 45))
    result = run_to_end(predict_probabilities(net, plane, tile_size=8, batch_size=16, device="cpu"))
    np.testing.assert_allclose(result, _whole_image(net, plane), atol=2e-5, rtol=0)


def test_a_tile_size_below_the_smallest_tile_is_raised_with_a_warning_once_per_run():
    model = _model()
    smallest = core_predict.smallest_tile(model.network)
    stack = np.stack([_random_plane((60, 45))[0]] * 3)
    for _ in range(2):  # each run says it, once for all its planes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predict(model, stack, tile_size=8, device="cpu")
        said = [str(warning.message) for warning in caught if issubclass(warning.category, InputWarning)]
        assert len(said) == 1 and f"tile size 8 is raised to {smallest}" in said[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(model, stack, tile_size=smallest, device="cpu")


@pytest.mark.parametrize("settings", [{"tile_size": 0}, {"batch_size": 0}, {"tile_size": -5}])
def test_non_positive_tile_or_batch_size_is_an_input_error(settings):
    with pytest.raises(InputError):
        predict(_model(), np.zeros((20, 20), np.uint8), device="cpu", **settings)


@pytest.mark.parametrize("threshold", [1.5, -0.2])
def test_threshold_outside_0_1_is_an_input_error(threshold):
    with pytest.raises(InputError, match="threshold"):
        predict(_model(), np.zeros((20, 20), np.uint8), device="cpu", threshold=threshold)


def test_without_a_threshold_the_models_own_is_used():
    model = _model()
    with torch.no_grad():  # mostly foreground, so that thresholds above 0.5 matter
        model.network.head.bias[1] += 2.5
    image = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    probability = predict(model, image, device="cpu").probability
    low, high = (float(np.quantile(probability, q)) for q in (0.3, 0.7))
    assert 0.5 < low < high
    model.threshold = high
    own = predict(model, image, device="cpu").labels
    np.testing.assert_array_equal(own, predict(model, image, device="cpu", threshold=high).labels)
    assert (own > 0).sum() < (predict(model, image, device="cpu", threshold=low).labels > 0).sum()


# --- stacks --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 150, 170), (2, 3, 130, 141)])
def test_stacks_go_plane_by_plane(shape):
    model = _model()
    stack = (np.random.default_rng(7).random(shape) * 1000).astype(np.uint16)
    planes = math.prod(shape[:-2])
    progress: list[PredictProgress] = []
    result = predict(model, stack, on_progress=progress.append, tile_size=64, batch_size=2, device="cpu")
    assert result.labels.shape == shape and result.probability.shape == shape
    # One progress item per tile batch, plane by plane.
    per_plane = len(list(predict_probabilities(
        model.network, np.zeros((1, *shape[-2:]), np.float32), tile_size=64, batch_size=2, device="cpu")))
    assert per_plane > 1
    assert len(progress) == planes * per_plane
    expected = [PredictProgress(plane, planes, done, per_plane)
                for plane in range(planes) for done in range(1, per_plane + 1)]
    assert progress == expected
    # Each plane gives what it gives alone.
    flat_image = stack.reshape(-1, *shape[-2:])
    flat_probability = result.probability.reshape(-1, *shape[-2:])
    flat_labels = result.labels.reshape(-1, *shape[-2:])
    for index in (0, planes - 1):
        alone = predict(model, flat_image[index], tile_size=64, batch_size=2, device="cpu")
        np.testing.assert_allclose(flat_probability[index], alone.probability, atol=1e-6)
        np.testing.assert_array_equal(flat_labels[index], alone.labels)


def _labelling_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("napari-unet-labels")]


def test_a_planes_labels_are_made_while_the_next_plane_goes_through_the_network(
        monkeypatch, first_labels_wait_for_the_network):
    model = _model()
    waited = first_labels_wait_for_the_network(model.network)
    stack = (np.random.default_rng(3).random((3, 40, 50)) * 1000).astype(np.uint16)
    result = predict(model, stack, tile_size=64, device="cpu")
    assert waited == [True]
    monkeypatch.undo()
    for index in range(3):
        np.testing.assert_array_equal(result.labels[index], predict(model, stack[index], tile_size=64, device="cpu").labels)
    assert not _labelling_threads()


def test_where_two_planes_work_would_not_fit_in_memory_labels_are_made_before_the_next_plane(monkeypatch):
    model = _model()
    events = []
    model.network.register_forward_pre_hook(lambda module, inputs: events.append("network"))
    real = core_predict.probabilities_to_labels

    def slow_labels(*args, **kwargs):  # long enough for the next plane to start, were it allowed to
        time.sleep(0.05)
        labels = real(*args, **kwargs)
        events.append("labels")
        return labels

    monkeypatch.setattr(core_predict, "probabilities_to_labels", slow_labels)
    # A quarter of 256 KiB is less than two 40x50 planes' work (2 x 9 values of 4 bytes a pixel).
    monkeypatch.setattr(core_predict, "available_memory", lambda: 2**18)
    stack = np.random.default_rng(5).random((3, 40, 50)).astype(np.float32)
    result = predict(model, stack, tile_size=64, device="cpu")
    assert events == ["network", "labels"] * 3
    monkeypatch.undo()
    np.testing.assert_array_equal(result.labels, predict(model, stack, tile_size=64, device="cpu").labels)


def test_progress_stays_in_order_when_labels_take_longer_than_the_next_plane(monkeypatch):
    model = _model()
    real = core_predict.probabilities_to_labels
    monkeypatch.setattr(core_predict, "probabilities_to_labels", lambda *a, **k: time.sleep(0.2) or real(*a, **k))
    stack = np.random.default_rng(4).random((3, 100, 100)).astype(np.float32)
    progress: list[PredictProgress] = []
    predict(model, stack, on_progress=progress.append, tile_size=48, batch_size=1, device="cpu")
    tiles = progress[0].total
    assert tiles > 2
    assert progress == [PredictProgress(plane, 3, done, tiles) for plane in range(3) for done in range(1, tiles + 1)]
    assert [item.plane for item in progress if item.labels is not None] == [0, 1, 2]


def test_a_failure_while_making_labels_stops_the_prediction(monkeypatch):
    model = _model()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise MemoryError("simulated")

    monkeypatch.setattr(core_predict, "probabilities_to_labels", failing)
    with pytest.raises(MemoryError, match="simulated"):
        predict(model, np.zeros((4, 30, 30), np.float32), device="cpu")
    assert len(calls) == 1  # the next plane's labels were not started
    assert not _labelling_threads()


def test_a_plane_that_fails_is_raised_once_the_plane_before_it_is_given_out():
    # The batch engine charges an error to the first plane it has no result for.
    model = _model()
    planes = [np.random.default_rng(6).random((1, 30, 30)).astype(np.float32), np.full((1, 30, 30), np.nan, np.float32)]
    given = []
    with pytest.raises(InputError, match="no finite pixel values"):
        for index, _done, _total, finished in core_predict.predict_planes_iter(
                model, ((plane, 1.0) for plane in planes), device="cpu"):
            if finished is not None:
                given.append(index)
    assert given == [0]
    assert not _labelling_threads()


def _dihedral_group() -> list:
    """The eight distinct orientations of a plane, as transposes and flips of its last two axes."""
    flips = [lambda a: a, lambda a: a[..., ::-1, :], lambda a: a[..., ::-1], lambda a: a[..., ::-1, ::-1]]
    return flips + [lambda a, flip=flip: flip(np.swapaxes(a, -1, -2)) for flip in flips]


def _put_back(transform, transformed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The ``shape``-sized plane(s) that ``transform`` turned into ``transformed``."""
    source = transform(np.arange(shape[0] * shape[1]).reshape(shape))  # where each pixel came from
    leading = transformed.shape[:-2]
    restored = np.empty(leading + shape, transformed.dtype)
    restored.reshape(*leading, -1)[..., source.ravel()] = transformed.reshape(*leading, -1)
    return restored


def test_test_time_augmentation_averages_the_eight_orientations():
    model = _model()
    image = (np.random.default_rng(5).random((100, 131)) * 4000).astype(np.uint16)
    normalized = model.normalization(image[np.newaxis])
    group = _dihedral_group()
    assert len({(transform(image).shape, transform(image).tobytes()) for transform in group}) == 8
    expected = np.mean([_put_back(transform, _whole_image(model.network, np.ascontiguousarray(transform(normalized))),
                                  image.shape) for transform in group], axis=0)
    progress = []
    result = predict(model, image, tile_size=64, batch_size=1, device="cpu", test_time_augmentation=True,
                     on_progress=progress.append)
    np.testing.assert_allclose(result.probability, 1.0 - expected[0], atol=2e-5, rtol=0)
    # A network of random weights is not symmetric: averaging changed the result.
    plain = predict(model, image, tile_size=64, batch_size=1, device="cpu").probability
    assert np.abs(result.probability - plain).max() > 1e-3
    # Progress counts the tile batches of all eight orientations.
    tiles = len(list(predict_probabilities(model.network, normalized, tile_size=64, batch_size=1, device="cpu")))
    assert tiles > 1
    assert progress == [PredictProgress(0, 1, done, 8 * tiles) for done in range(1, 8 * tiles + 1)]


def test_predict_iter_stops_when_the_generator_is_closed():
    model = _model()
    calls = []
    model.network.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    stack = np.random.default_rng(8).random((4, 100, 100)).astype(np.float32)
    generator = predict_iter(model, stack, tile_size=48, batch_size=1, device="cpu")
    first = next(generator)
    assert first == PredictProgress(0, 4, 1, first.total) and first.total > 1
    assert len(calls) == 1
    generator.close()
    assert generator.gi_frame is None
    with pytest.raises(StopIteration):
        next(generator)
    assert len(calls) == 1  # no further tile was predicted
    assert not _labelling_threads()


def test_predict_iter_returns_a_prediction():
    model = _model()
    generator = predict_iter(model, np.zeros((20, 30), np.float32), device="cpu")
    result = run_to_end(generator)
    assert isinstance(result, Prediction)


# --- channels ------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [False, True])
def test_rgb_into_a_one_channel_model_warns_and_uses_gray(alpha):
    model = _model()
    rng = np.random.default_rng(9)
    rgb = (rng.random((40, 50, 4 if alpha else 3)) * 255).astype(np.uint8)
    with pytest.warns(InputWarning, match="gray"):
        result = predict(model, rgb, device="cpu")
    assert result.labels.shape == (40, 50)
    gray = 0.299 * rgb[..., 0].astype(np.float32) + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    expected = predict(model, gray.astype(np.float32), device="cpu")
    np.testing.assert_allclose(result.probability, expected.probability, atol=1e-5)


def test_two_channel_model_takes_channels_first():
    model = _model(in_channels=2)
    image = (np.random.default_rng(10).random((2, 36, 44)) * 100).astype(np.float32)
    result = predict(model, image, device="cpu")
    assert result.labels.shape == (36, 44) and result.probability.shape == (36, 44)
    # Both channels matter.
    swapped = predict(model, image[::-1].copy(), device="cpu")
    assert not np.allclose(swapped.probability, result.probability)
    # Channels last needs the channel axis: the last two axes are always height and width.
    channels_last = np.moveaxis(image, 0, -1)
    with pytest.raises(InputError):
        predict(model, channels_last, device="cpu")
    moved = predict(model, channels_last, channel_axis=-1, device="cpu")
    np.testing.assert_allclose(moved.probability, result.probability, atol=1e-6)
    np.testing.assert_array_equal(moved.labels, result.labels)


def test_two_channel_model_predicts_a_stack():
    model = _model(in_channels=2)
    stack = np.random.default_rng(11).random((3, 2, 24, 28)).astype(np.float32)
    result = predict(model, stack, device="cpu")
    assert result.probability.shape == (3, 24, 28)
    alone = predict(model, stack[1], device="cpu")
    np.testing.assert_allclose(result.probability[1], alone.probability, atol=1e-6)


def test_three_channel_model_takes_rgb_without_warning():
    model = _model(in_channels=3)
    rgb = (np.random.default_rng(12).random((30, 40, 3)) * 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = predict(model, rgb, device="cpu")
    assert result.labels.shape == (30, 40)


@pytest.mark.parametrize(
    ("in_channels", "shape"),
    [(2, (3, 30, 30)), (2, (30, 30)), (3, (30, 30)), (2, (30, 40, 3)), (4, (5, 20, 20))],
)
def test_channels_that_do_not_fit_the_model_are_an_input_error(in_channels, shape):
    model = _model(in_channels=in_channels)
    with pytest.raises(InputError, match="channel"):
        predict(model, np.ones(shape, np.float32), device="cpu")


# --- outputs -------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3])
def test_labels_are_int32_and_probability_float32_in_0_1(nuclei, num_classes):
    image, _ = nuclei
    model = _model(num_classes=num_classes)
    result = predict(model, image, min_size=1, tile_size=64, device="cpu")
    assert result.labels.dtype == np.int32
    assert result.probability.dtype == np.float32
    assert result.labels.shape == image.shape == result.probability.shape
    assert result.probability.min() >= 0.0 and result.probability.max() <= 1.0
    assert result.labels.min() >= 0
    # Objects are numbered 1..N.
    objects = np.unique(result.labels[result.labels > 0])
    assert np.array_equal(objects, np.arange(1, len(objects) + 1))


def test_threshold_one_gives_no_objects():
    model = _model()
    image = np.random.default_rng(13).random((40, 40)).astype(np.float32)
    result = predict(model, image, threshold=1.0, device="cpu")
    assert result.labels.max() == 0


def test_nan_and_inf_pixels_warn_and_still_predict():
    model = _model()
    image = np.random.default_rng(14).random((40, 50)).astype(np.float32)
    image[3, 4] = np.nan
    image[10:12, 20] = np.inf
    image[30, 30] = -np.inf
    with pytest.warns(InputWarning, match="NaN"):
        result = predict(model, image, device="cpu")
    assert result.probability.shape == (40, 50)
    assert np.isfinite(result.probability).all()
    assert result.probability.min() >= 0 and result.probability.max() <= 1


def test_an_all_nan_image_is_an_input_error():
    with pytest.raises(InputError):
        predict(_model(), np.full((20, 20), np.nan, np.float32), device="cpu")


def test_the_input_is_not_modified():
    model = _model()
    image = np.random.default_rng(15).random((30, 30)).astype(np.float32)
    image[0, 0] = np.nan
    before = image.copy()
    with pytest.warns(InputWarning):
        predict(model, image, device="cpu")
    np.testing.assert_array_equal(image, before)


def test_normalization_of_the_model_is_applied():
    net = _network()
    image = (np.random.default_rng(16).random((40, 40)) * 1000).astype(np.float32)
    a = predict(Model(network=net, normalization=Normalization(0, 100)), image, device="cpu")
    b = predict(Model(network=net, normalization=Normalization(0, 100)), image * 7 + 3, device="cpu")
    c = predict(Model(network=net, normalization=Normalization(20, 50)), image, device="cpu")
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)  # scale invariant
    assert not np.allclose(a.probability, c.probability, atol=1e-4)


# --- running out of memory ---------------------------------------------------------


def _forward_that_fits(net: UNet, most: int, calls: list):
    """The network's forward, raising torch's out-of-memory error above ``most`` tiles."""
    forward = net.forward

    def limited(x):
        calls.append(len(x))
        if len(x) > most:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    return limited


def test_out_of_memory_halves_the_tile_batch_and_gives_the_same_result(monkeypatch):
    plane = _random_plane((333, 517))
    expected = run_to_end(predict_probabilities(_network(), plane, tile_size=96, batch_size=8, device="cpu"))
    net, calls = _network(), []
    monkeypatch.setattr(net, "forward", _forward_that_fits(net, 2, calls))
    with pytest.warns(InputWarning, match="going on with 4"):
        result = run_to_end(predict_probabilities(net, plane, tile_size=96, batch_size=8, device="cpu"))
    np.testing.assert_allclose(result, expected, atol=2e-5, rtol=0)
    assert calls[:3] == [8, 4, 2] and set(calls[3:]) <= {1, 2}


def test_out_of_memory_on_a_single_tile_says_to_choose_smaller_tiles(monkeypatch):
    net = _network()
    monkeypatch.setattr(net, "forward", _forward_that_fits(net, 0, []))
    with pytest.warns(InputWarning), pytest.raises(InputError, match="smaller tile size"):
        run_to_end(predict_probabilities(net, _random_plane((100, 100)), tile_size=64, batch_size=2, device="cpu"))


def test_other_errors_of_the_network_are_not_taken_for_memory(monkeypatch):
    net = _network()

    def broken(x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(net, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        run_to_end(predict_probabilities(net, _random_plane((50, 50)), device="cpu"))


def test_prediction_follows_weights_changed_in_place():
    # Training updates weights in place; a prediction after it must use the new weights.
    net = _network()
    plane = _random_plane((40, 40))
    before = run_to_end(predict_probabilities(net, plane, device="cpu"))
    with torch.no_grad():
        net.head.bias.add_(torch.tensor([1.0, -1.0]))
    after = run_to_end(predict_probabilities(net, plane, device="cpu"))
    np.testing.assert_allclose(after, _whole_image(net, plane), atol=2e-5, rtol=0)
    assert np.abs(after - before).max() > 0.1


def test_a_cpu_with_amx_predicts_with_a_bfloat16_copy_close_to_float32(cpu_with_amx):
    from napari_unet.core.predict import _inference_copies

    net = _network(depth=3, base_width=8)
    plane = _random_plane((150, 170))
    exact = run_to_end(predict_probabilities(net, plane, tile_size=96, device="cpu", amp=False))
    mixed = run_to_end(predict_probabilities(net, plane, tile_size=96, device="cpu"))
    copies = _inference_copies[net]
    assert {kind[1] for kind in copies} == {torch.float32, torch.bfloat16}
    assert all(p.dtype == torch.bfloat16 for p in copies["cpu", torch.bfloat16, False][1].parameters())
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed.sum(axis=0), 1.0, atol=1e-5)
    # bfloat16 keeps 8 bits of mantissa: close to float32, not equal to it.
    difference = np.abs(mixed - exact)
    assert 0 < difference.mean() < 0.01 and difference.max() < 0.1


@pytest.mark.parametrize("options", [{"test_time_augmentation": True}, {"diameter": "auto"}],
                         ids=["eight orientations", "estimated diameter"])
def test_bfloat16_serves_every_way_of_predicting(cpu_with_amx, options):
    model = Model(network=_network(depth=2, base_width=8), object_diameter=10.0)
    image = _random_plane((90, 110))[0]
    exact = predict(model, image, device="cpu", amp=False, **options)
    mixed = predict(model, image, device="cpu", **options)
    assert mixed.probability.dtype == np.float32 and mixed.labels.dtype == exact.labels.dtype
    assert 0 < np.abs(mixed.probability - exact.probability).max() < 0.1


def test_inference_copy_computes_what_the_network_computes():
    net = _network(depth=3, base_width=8)
    x = torch.from_numpy(_random_plane((64, 48)))[None]
    with torch.no_grad():
        expected = net(x)
        fast = net.inference_copy(torch.device("cpu"))(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.inference_copy(torch.device("cpu")).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is left alone
    torch.testing.assert_close(fast, expected, atol=1e-4, rtol=1e-4)


def _can_compile() -> bool:
    """torch.compile's CPU code generation needs a C++ compiler."""
    import shutil

    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


@pytest.mark.skipif(not _can_compile(), reason="torch.compile needs a C++ compiler on the CPU")
def test_compiled_network_predicts_the_same_labels():
    model = _model(depth=2, base_width=4)
    plane = _random_plane((150, 130))
    expected = predict(model, plane, tile_size=96, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        compiled = predict(model, plane, tile_size=96, device="cpu", compile_network=True)
    fallbacks = [str(w.message) for w in caught if "could not compile" in str(w.message)]
    if fallbacks:  # a compiler without what torch's code generation needs (OpenMP, headers)
        pytest.skip(fallbacks[0])
    from napari_unet.core.predict import _inference_copies

    copies = _inference_copies[model.network]
    assert isinstance(copies["cpu", torch.float32, True][1], torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(copies["cpu", torch.float32, False][1], torch._dynamo.eval_frame.OptimizedModule)
    np.testing.assert_allclose(compiled.probability, expected.probability, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(compiled.labels, expected.labels)


def test_a_network_that_cannot_be_compiled_predicts_uncompiled_with_a_warning(monkeypatch):
    def compiler_missing(network, **options):
        def run(x):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\nno compiler found")

        return run

    model = _model()
    plane = _random_plane((70, 90))
    expected = predict(model, plane, tile_size=64, device="cpu")
    monkeypatch.setattr(torch, "compile", compiler_missing)
    with pytest.warns(InputWarning, match=r"could not compile the network \(InductorError.*predicting without"):
        result = predict(model, plane, tile_size=64, device="cpu", compile_network=True)
    np.testing.assert_allclose(result.probability, expected.probability, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(result.labels, expected.labels)


def test_default_tile_size_is_the_gpu_one_on_a_gpu_and_as_much_as_memory_allows_on_a_cpu(monkeypatch):
    from napari_unet.core import predict as core_predict
    from napari_unet.core.predict import CPU_TILE_SIZE, GPU_TILE_SIZE, default_tile_size

    net = _network(depth=4, base_width=16)
    assert default_tile_size(net, torch.device("cuda")) == GPU_TILE_SIZE
    per_pixel = 6 * 16 * 4  # bytes of feature maps per tile pixel on a CPU
    for available, expected in [(64 * 2**30, CPU_TILE_SIZE), (4 * per_pixel * 1500**2, 1488),
                                (2**30, GPU_TILE_SIZE)]:
        monkeypatch.setattr(core_predict, "available_memory", lambda available=available: available)
        assert default_tile_size(net, torch.device("cpu")) == expected


def test_without_a_tile_size_a_cpu_predicts_a_2048_plane_in_one_pass(monkeypatch):
    from napari_unet.core import predict as core_predict

    monkeypatch.setattr(core_predict, "available_memory", lambda: 64 * 2**30)
    net, calls = _network(depth=2, base_width=4), []
    monkeypatch.setattr(net, "forward", _forward_that_fits(net, 8, calls))
    plane = _random_plane((2048, 1100))
    result = run_to_end(predict_probabilities(net, plane, device="cpu"))
    assert calls == [1]
    tiled = run_to_end(predict_probabilities(_network(depth=2, base_width=4), plane, tile_size=1024, device="cpu"))
    np.testing.assert_allclose(result, tiled, atol=2e-5, rtol=0)


def test_a_model_can_be_given_by_its_files_path(tmp_path):
    model = _model()
    path = model.save(tmp_path / "tiny.safetensors")
    image = np.random.default_rng(9).random((40, 50)).astype(np.float32)
    np.testing.assert_array_equal(predict(str(path), image, device="cpu").labels, predict(model, image, device="cpu").labels)
    with pytest.raises(InputError, match="a model is a Model"):
        predict(None, image, device="cpu")
