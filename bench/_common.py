"""Pieces shared by the torch benchmark scripts of this folder.

The scripts run as ``python bench/bench_x.py`` and import this module as ``_common``:
Python puts the folder of the script it runs first on ``sys.path``, whatever the working
directory is. ``bench_weights.py`` does not use it, so that it stays free of torch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.core import predict as predict_module
from napari_unet.core.bundle import Model
from napari_unet.core.device import resolve_device
from napari_unet.core.errors import InputError
from napari_unet.core.metrics import average_precision, pixel_scores
from napari_unet.core.model import NetworkConfig, UNet
from napari_unet.core.normalize import as_planes
from napari_unet.core.predict import Prediction, image_border, predict
from napari_unet.core.progress import run_to_end
from napari_unet.core.train import TrainingConfig, TrainingSample, train_iter


def torch_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """An argument parser with the options every torch script takes.

    Args:
        doc: The script's docstring; its first line becomes the description.
        quick_help: What ``--quick`` makes smaller in this script.

    Returns:
        A parser with ``--device``, ``--threads`` and ``--quick``; scripts add their own.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def torch_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and resolve ``--device``.

    A device that this machine lacks ends the script as a usage error (exit status 2),
    like any other bad option.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return resolve_device(args.device)
    except InputError as error:
        parser.error(str(error))


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(device: torch.device, n: int | None = None, repeats: int = 3,
                       dtype: torch.dtype = torch.float32) -> list[float]:
    """Matmul FLOP/s of ``repeats`` single products of two n x n matrices.

    Args:
        device: Where to multiply.
        n: Matrix edge; default 2048 on a CPU and 8192 on a GPU, whose peak a smaller
            product does not reach (it is over before the GPU is busy).
        repeats: Timed products.
        dtype: The network's precision
            (:func:`~napari_unet.core.device.mixed_precision_dtype`): the hardware limit
            of a network run in float16 or bfloat16 is that precision's rate, not float32's.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    for _ in range(2):
        torch.matmul(a, b)
    synchronize(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        rates.append(2.0 * n**3 / (time.perf_counter() - start))
    return rates


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as the JSON figures name it: "float32", "float16", "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def forward_flops(config: NetworkConfig, height: int, width: int) -> int:
    """FLOPs of one forward pass of a (1, C, height, width) input, counted on the meta device."""
    network = UNet(config).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.empty((1, config.in_channels, height, width), device="meta"))
    return counter.get_total_flops()


def whole_image_input(network: UNet, normalized: np.ndarray) -> tuple[np.ndarray, int]:
    """The plane mirror-padded by predict's image border, and to a size the network takes.

    Returns:
        The padded ``(channels, H, W)`` float32 plane and the border, which is where the
        image starts in it (and, for a "same" network, in the network's output).
    """
    border = image_border(network)
    height, width = normalized.shape[-2:]
    full_h = network.valid_input_size(height + 2 * border)
    full_w = network.valid_input_size(width + 2 * border)
    pad = ((0, 0), (border, full_h - height - border), (border, full_w - width - border))
    return np.ascontiguousarray(np.pad(normalized, pad, mode="reflect"), dtype=np.float32), border


def normalize_seconds(model: Model, image: np.ndarray, repeats: int = 3) -> float:
    """Median seconds of the model's normalization of the (single-plane) image, as predict does it."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.normalization(as_planes(image, model.config.in_channels)[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_predict(model: Model, image: np.ndarray, **kwargs) -> tuple[Prediction, float, float]:
    """Run predict; return the prediction, its seconds and the seconds of its post-processing.

    Post-processing is timed by wrapping the function that makes a plane's labels and
    foreground probability from its network output (in this process only; on a GPU it
    ends with their transfer to main memory, so the time includes the GPU's work), so
    the split does not depend on when predict reports progress.

    Args:
        model: The model.
        image: The image.
        **kwargs: Passed to :func:`napari_unet.core.predict.predict`.
    """
    post = [0.0]

    def timed(function):
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                post[0] += time.perf_counter() - begin

        return wrapper

    original = predict_module._labelled
    predict_module._labelled = timed(original)
    try:
        start = time.perf_counter()
        prediction = predict_module.predict(model, image, **kwargs)
        seconds = time.perf_counter() - start
    finally:
        predict_module._labelled = original
    return prediction, seconds, post[0]


def environment(device: torch.device, quick: bool) -> dict:
    """The fields that say where and how a result was measured (last in every JSON object)."""
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": quick,
    }


def report(result: dict) -> dict:
    """Print the result as one JSON object on stdout, and return it."""
    print(json.dumps(result))
    return result


def scores(model, images, truths, device) -> dict:
    """AP50, AP75, mean AP over IoU 0.5:0.95 (per image) and pixel IoU of the model's predictions of ``images``."""
    predictions = [predict(model, image, device=device).labels for image in images]
    instances = average_precision(truths, predictions)
    thresholds = instances["thresholds"]
    pixels = pixel_scores(np.concatenate([p.ravel() for p in predictions]), np.concatenate([t.ravel() for t in truths]))
    return {
        "ap50": round(instances["ap_pooled"][thresholds.index(0.5)], 4),
        "ap75": round(instances["ap_pooled"][thresholds.index(0.75)], 4),
        "mean_ap_0.5_0.95": round(float(np.mean(instances["ap_mean"])), 4),
        "pixel_iou": round(pixels["iou"], 4),
    }


def fine_tune(model, images, labels, minutes: float, device: str, **settings) -> tuple[object, dict]:
    """The Train widget's defaults, with a time budget; returns the model and what training did.

    Args:
        settings: Further :class:`~napari_unet.core.train.TrainingConfig` fields (the
            learning rate, ``freeze_norm``) where a script compares them.
    """
    config = TrainingConfig(max_minutes=minutes, epochs=10**6, device=device, seed=0, **settings)
    samples = [TrainingSample(image, label, name=f"image {i}") for i, (image, label) in enumerate(zip(images, labels))]
    start = time.monotonic()
    result = run_to_end(train_iter(samples, model=model, config=config))
    training = result.model.training
    return result.model, {"train_seconds": round(time.monotonic() - start, 1), "steps": training["steps"],
                          "learning_rate": training["learning_rate"], "stop_reason": result.stop_reason,
                          "model_kept": result.unchanged}
