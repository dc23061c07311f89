"""Prediction throughput of the full pipeline, against a whole-image forward pass.

Times ``napari_unet.core.predict.predict`` (normalization, overlap-tile network passes,
stitching, post-processing to labels) on a generated nuclei image with the default
network (random He initialization; speed does not depend on training) and tile size 512.
The peer is the plain whole-image forward pass of the same network (eval mode,
``torch.inference_mode``) on the normalized image mirror-padded by the network's
context, which is the least network work that gives the same result. Headline:
``ratio = megapixels_per_s / peer_megapixels_per_s``. Also reported: the FLOP rate of
the tile loop as a fraction of the fp32 matmul FLOP/s measured in the same process, and
the share of the time spent in each stage (post-processing in particular). Prints one
JSON object.

    python bench/bench_predict.py                        # CPU, 1024x1024 (about 1.5 min on 2 cores)
    python bench/bench_predict.py --size 2048            # CPU, 2048x2048 (several minutes on 2 cores)
    python bench/bench_predict.py --device auto          # CUDA when there is one, 2048x2048
    python bench/bench_predict.py --quick                # 256x256, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.core import predict as predict_module
from napari_unet.core.bundle import Model
from napari_unet.core.device import autocast, resolve_device
from napari_unet.core.errors import InputError
from napari_unet.core.model import NetworkConfig, UNet
from napari_unet.core.normalize import as_planes
from napari_unet.core.postprocess import foreground_probability, probabilities_to_labels
from napari_unet.core.predict import _axis_tiling, predict
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.targets import class_targets


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(device: torch.device, n: int = 2048, repeats: int = 3) -> list[float]:
    """fp32 matmul FLOP/s of ``repeats`` single products of two n x n matrices."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator)
    b = torch.randn(n, n, device=device, generator=generator)
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


def forward_flops(config: NetworkConfig, height: int, width: int) -> int:
    """FLOPs of one forward pass of a (1, C, height, width) input, counted on the meta device."""
    network = UNet(config).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.empty((1, config.in_channels, height, width), device="meta"))
    return counter.get_total_flops()


def whole_image_input(network: UNet, normalized: np.ndarray) -> tuple[np.ndarray, int]:
    """The plane mirror-padded by the context, and to a size the network takes."""
    context = network.context
    height, width = normalized.shape[-2:]
    full_h = network.valid_input_size(height + 2 * context)
    full_w = network.valid_input_size(width + 2 * context)
    pad = ((0, 0), (context, full_h - height - context), (context, full_w - width - context))
    return np.ascontiguousarray(np.pad(normalized, pad, mode="reflect"), dtype=np.float32), context


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    parser.add_argument("--size", type=int, default=None, help="image edge (default 2048 on CUDA, 1024 on CPU)")
    parser.add_argument("--tile", type=int, default=512, help="tile size of predict (default 512)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass (predict's default 4)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs of each (default 3 on CUDA and with --quick, 1 on CPU)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too (predict's default is float16)")
    parser.add_argument("--quick", action="store_true", help="256x256 image, for smoke tests")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except InputError as error:
        parser.error(str(error))
    size = args.size or (256 if args.quick else 2048 if device.type == "cuda" else 1024)
    repeats = args.repeats or (3 if device.type == "cuda" or args.quick else 1)
    amp = not args.no_amp

    image, labels = synthetic_nuclei((size, size), count=max(2, round(505 * size * size / 1024**2)), seed=0)
    torch.manual_seed(0)
    model = Model.new(NetworkConfig())
    network = model.network.to(device).eval()
    normalized = model.normalization(as_planes(image, model.config.in_channels)[0])[0]
    padded, context = whole_image_input(network, normalized)

    def peer():
        with torch.inference_mode(), autocast(device, amp):
            logits = network(torch.from_numpy(padded)[None].to(device))
        synchronize(device)
        return logits

    def ours():
        """Run predict; return the prediction, its seconds and the seconds of its post-processing.

        Post-processing is timed by wrapping the two post-processing functions that
        predict calls (in this process only), so the split does not depend on when
        predict reports progress.
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

        names = ("foreground_probability", "probabilities_to_labels")
        originals = {name: getattr(predict_module, name) for name in names}
        for name, function in originals.items():
            setattr(predict_module, name, timed(function))
        try:
            start = time.perf_counter()
            prediction = predict(model, image, tile_size=args.tile, batch_size=args.batch, device=device, amp=amp)
            seconds = time.perf_counter() - start
        finally:
            for name, function in originals.items():
                setattr(predict_module, name, function)
        return prediction, seconds, post[0]

    # Warm-up on a small image: allocator, thread pool, kernels.
    small = image[:64, :64]
    predict(model, small, tile_size=args.tile, batch_size=args.batch, device=device, amp=amp)
    with torch.inference_mode(), autocast(device, amp):
        network(torch.from_numpy(whole_image_input(network, normalized[:, :64, :64])[0])[None].to(device))
    if device.type == "cuda":  # cheap there: warm up at the real shapes
        ours()
        peer()

    normalize_times = []
    for _ in range(3):
        start = time.perf_counter()
        model.normalization(as_planes(image, model.config.in_channels)[0])
        normalize_times.append(time.perf_counter() - start)
    normalize_s = statistics.median(normalize_times)

    # Work done: tiles of predict vs one padded whole image.
    rows = _axis_tiling(network, size, args.tile)
    cols = _axis_tiling(network, size, args.tile)
    tiles = rows.count * cols.count
    tile_flops = tiles * forward_flops(model.config, rows.tile, cols.tile)
    peer_flops = forward_flops(model.config, *padded.shape[-2:])

    # Interleaved: matmul, ours, matmul, peer, matmul, ... Each run is compared with the
    # matmul rate measured just before and after it, and ours with the peer next to it,
    # so that load changes of a shared machine show on both sides of every ratio.
    before = matmul_flops_per_s(device)
    mm_rates = list(before)
    totals, loops, posts, peers = [], [], [], []
    ratios, network_fractions, peer_fractions = [], [], []
    prediction = logits = None
    for _ in range(repeats):
        prediction, seconds, post = ours()
        totals.append(seconds)
        loops.append(seconds - normalize_s - post)
        posts.append(post)
        middle = matmul_flops_per_s(device)
        start = time.perf_counter()
        logits = peer()
        peers.append(time.perf_counter() - start)
        after = matmul_flops_per_s(device)
        mm_rates += middle + after
        ratios.append(peers[-1] / totals[-1])
        network_fractions.append(tile_flops / loops[-1] / statistics.median(before + middle))
        peer_fractions.append(peer_flops / peers[-1] / statistics.median(middle + after))
        before = after

    total_s, loop_s, post_s, peer_s = (statistics.median(v) for v in (totals, loops, posts, peers))
    mm_rate = statistics.median(mm_rates)

    # Same result? Foreground probability of predict vs the center of the whole-image pass.
    whole = torch.softmax(logits.float(), dim=1)[0, 0, context : context + size, context : context + size]
    difference = float(np.max(np.abs(prediction.probability - (1.0 - whole.cpu().numpy()))))

    # Post-processing of probabilities like a trained network's (from the ground truth):
    # an untrained network's output has few objects, which flatters post-processing.
    truth = np.eye(2, dtype=np.float32)[class_targets(labels)].transpose(2, 0, 1).copy()
    truth_times = []
    for _ in range(3):
        start = time.perf_counter()
        foreground_probability(truth)
        trained_labels = probabilities_to_labels(truth)
        truth_times.append(time.perf_counter() - start)
    post_truth_s = statistics.median(truth_times)

    megapixels = size * size / 1e6
    result = {
        "benchmark": "predict",
        "ratio": round(statistics.median(ratios), 3),
        "megapixels_per_s": round(megapixels / total_s, 4),
        "peer_megapixels_per_s": round(megapixels / peer_s, 4),
        "seconds": round(total_s, 3),
        "peer_seconds": round(peer_s, 3),
        "network_flops_fraction_of_matmul": round(statistics.median(network_fractions), 3),
        "peer_flops_fraction_of_matmul": round(statistics.median(peer_fractions), 3),
        "tile_loop_gflops_per_s": round(tile_flops / loop_s / 1e9, 2),
        "peer_gflops_per_s": round(peer_flops / peer_s / 1e9, 2),
        "matmul_gflops_per_s": round(mm_rate / 1e9, 2),
        "share_normalize": round(normalize_s / total_s, 4),
        "share_tile_loop": round(loop_s / total_s, 4),
        "share_postprocess": round(post_s / total_s, 4),
        "normalize_seconds": round(normalize_s, 4),
        "tile_loop_seconds": round(loop_s, 3),
        "postprocess_seconds": round(post_s, 4),
        "postprocess_trained_like_seconds": round(post_truth_s, 4),
        "postprocess_trained_like_share": round(post_truth_s / (total_s - post_s + post_truth_s), 4),
        "objects": int(labels.max()),
        "objects_found_trained_like": int(trained_labels.max()),
        "tiles": tiles,
        "tile_edge": rows.tile,
        "tile_step": rows.step,
        "context": context,
        "network_gflops_tiles": round(tile_flops / 1e9, 1),
        "network_gflops_whole_image": round(peer_flops / 1e9, 1),
        "tile_work_over_whole_image": round(tile_flops / peer_flops, 3),
        "max_abs_difference_vs_whole_image": difference,
        "shape": [size, size],
        "amp": amp and device.type == "cuda",
        "seconds_all": [round(t, 3) for t in totals],
        "peer_seconds_all": [round(t, 3) for t in peers],
        "matmul_gflops_per_s_all": [round(r / 1e9, 1) for r in mm_rates],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
