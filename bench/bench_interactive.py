"""Latency of predicting one 512x512 plane, as the widget's "predict current plane only" does.

That loop must feel immediate: predicting the plane on screen should take well under a
second (here: a median below 0.5 s) on a 2-core CPU with the small network trained
from scratch on a CPU (``scratch_network_config``: depth 3, base width 16); the default network
(``NetworkConfig()``: depth 4, base width 32) is measured too. For each network this
times ``napari_unet.core.predict.predict`` with its defaults (normalization, tiles of at
most 1024 pixels, one per pass on a CPU, post-processing to labels) on a generated 512x512 nuclei
image, interleaved with its peer: the plain forward pass of the same network (eval,
``torch.inference_mode``) over the normalized plane mirror-padded by predict's
image border, under the autocast of predict's mixed precision (bfloat16 on a CPU with
AMX, float16 on CUDA). Headline per network: ``ratio = peer_seconds / seconds`` (median
over the pairs); also the network's FLOP rate in predict as a fraction of the matmul
FLOP/s at the network's precision (``matmul_dtype``) measured around each pair. Random He initialization, seed 0: speed does not depend on
the weights. The embedded ``nuclei`` model, with its trained weights, is measured too
when the package ships it: it must take under a second. Prints one JSON object.

    python bench/bench_interactive.py                 # CPU, 512x512 (about a minute on 2 loaded cores)
    python bench/bench_interactive.py --device auto   # CUDA when there is one
    python bench/bench_interactive.py --quick         # 128x128, one run each, for smoke tests
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from _common import (
    dtype_name,
    environment,
    forward_flops,
    matmul_flops_per_s,
    normalize_seconds,
    report,
    synchronize,
    timed_predict,
    torch_device,
    torch_parser,
    whole_image_input,
)

from napari_unet.core.bundle import Model
from napari_unet.core.device import autocast, mixed_precision_dtype
from napari_unet.core.model import NetworkConfig, scratch_network_config
from napari_unet.core.normalize import as_planes
from napari_unet.core.predict import _axis_tiling, predict
from napari_unet.core.registry import embedded_models, load_model
from napari_unet.core.synthetic import synthetic_nuclei

#: The median seconds below which a prediction counts as well under a second.
WELL_UNDER_A_SECOND = 0.5
#: The widgets' tile size (a 512x512 plane is one tile at any default).
TILE_SIZE = 1024
#: The embedded nuclei model must segment a 512x512 plane faster than this on a 2-core CPU.
EMBEDDED_LIMIT = 1.0


def measure(
    model: Model, image: np.ndarray, repeats: int, device: torch.device, matmul: list[list[float]]
) -> dict:
    """Time predict and the whole-plane forward pass of one model's network, interleaved.

    Args:
        model: The model (a new one, or an embedded one).
        image: The 2D image.
        repeats: Timed (predict, forward pass) pairs.
        device: Where the network runs.
        matmul: Groups of matmul FLOP/s measured so far; the last one was measured just
            before this call. One group is appended after each pair, so that every pair
            is compared with the machine's speed right before and after it.

    Returns:
        The network's fields of the printed JSON object.
    """
    config = model.config
    network = model.network.to(device).eval()
    normalized = model.normalization(as_planes(image, config.in_channels)[0])[0]
    padded, border = whole_image_input(network, normalized)
    height, width = image.shape

    def peer():
        with torch.inference_mode(), autocast(device):
            logits = network(torch.from_numpy(padded)[None].to(device))
        synchronize(device)
        return logits

    # Warm-up: on a CPU on a small crop (allocator, thread pool), leaving any first-run cost
    # at the real shapes to the median over at least 3 runs; a GPU is cheap enough to warm
    # up at the real shapes.
    crop = slice(None) if device.type == "cuda" else slice(0, 64)
    predict(model, image[crop, crop], device=device)
    with torch.inference_mode(), autocast(device):
        network(torch.from_numpy(whole_image_input(network, normalized[:, crop, crop])[0])[None].to(device))
    synchronize(device)
    normalize_s = normalize_seconds(model, image)

    # Work done: predict's tiles against the one padded plane.
    rows = _axis_tiling(network, height, TILE_SIZE)
    cols = _axis_tiling(network, width, TILE_SIZE)
    tile_flops = rows.count * cols.count * forward_flops(config, rows.tile, cols.tile)
    peer_flops = forward_flops(config, *padded.shape[-2:])

    totals, posts, peers, ratios, network_fractions, peer_fractions = [], [], [], [], [], []
    for _ in range(repeats):
        prediction, seconds, post = timed_predict(model, image, device=device)
        start = time.perf_counter()
        logits = peer()
        peers.append(time.perf_counter() - start)
        totals.append(seconds)
        posts.append(post)
        matmul.append(matmul_flops_per_s(device, dtype=mixed_precision_dtype(device)))
        around = statistics.median(matmul[-2] + matmul[-1])
        ratios.append(peers[-1] / seconds)
        # As in bench_predict.py: the network's share of predict is what remains after
        # normalization and post-processing.
        network_fractions.append(tile_flops / (seconds - normalize_s - post) / around)
        peer_fractions.append(peer_flops / peers[-1] / around)

    total_s, post_s, peer_s = (statistics.median(v) for v in (totals, posts, peers))
    # Same result? Foreground probability of predict vs the center of the whole-plane pass.
    whole = torch.softmax(logits.float(), dim=1)[0, 0, border : border + height, border : border + width]
    difference = float(np.max(np.abs(prediction.probability - (1.0 - whole.cpu().numpy()))))
    return {
        "ratio": round(statistics.median(ratios), 3),
        "seconds": round(total_s, 4),
        "peer_seconds": round(peer_s, 4),
        "well_under_a_second": total_s < WELL_UNDER_A_SECOND,
        "network_flops_fraction_of_matmul": round(statistics.median(network_fractions), 3),
        "peer_flops_fraction_of_matmul": round(statistics.median(peer_fractions), 3),
        "share_postprocess": round(post_s / total_s, 4),
        "share_normalize": round(normalize_s / total_s, 4),
        "tiles": rows.count * cols.count,
        "tile_edge": [rows.tile, cols.tile],
        "image_border": border,
        "network_gflops_tiles": round(tile_flops / 1e9, 2),
        "network_gflops_whole_image": round(peer_flops / 1e9, 2),
        "tile_work_over_whole_image": round(tile_flops / peer_flops, 3),
        "max_abs_difference_vs_whole_image": difference,
        "seconds_all": [round(t, 4) for t in totals],
        "peer_seconds_all": [round(t, 4) for t in peers],
        "network": config.to_dict(),
    }


def main(argv=None) -> dict:
    parser = torch_parser(__doc__, "128x128 image, one run of each, for smoke tests")
    parser.add_argument("--size", type=int, default=None, help="image edge (default 512; 128 with --quick)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs of each network (default on CPU 5 for the small network and 3 for the default one; 10 on CUDA)",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    device = torch_device(parser, args)
    size = args.size or (128 if args.quick else 512)
    if args.repeats:
        repeats = (args.repeats, args.repeats)
    elif args.quick:
        repeats = (1, 1)
    else:
        # The default network takes three to four times as long per run on a CPU; fewer of
        # its runs keep the script near a minute, and 3 still let the median drop a slow one.
        repeats = (10, 10) if device.type == "cuda" else (5, 3)

    # 120 nuclei on 512x512, as many per pixel at other sizes.
    image, labels = synthetic_nuclei((size, size), count=max(2, round(120 * size * size / 512**2)), seed=0)
    matmul = [matmul_flops_per_s(device, dtype=mixed_precision_dtype(device))]
    torch.manual_seed(0)
    widget_cpu = measure(Model.new(scratch_network_config(torch.device("cpu"))), image, repeats[0], device, matmul)
    default = measure(Model.new(NetworkConfig()), image, repeats[1], device, matmul)
    embedded = {}
    if "nuclei" in embedded_models():
        embedded = measure(load_model("nuclei"), image, repeats[0], device, matmul)
        embedded["under_one_second"] = embedded["seconds"] < EMBEDDED_LIMIT
    rates = [r for group in matmul for r in group]
    result = {
        "benchmark": "interactive",
        "widget_cpu_network": widget_cpu,
        "default_network": default,
        "embedded_nuclei": embedded or "not shipped",
        "matmul_gflops_per_s": round(statistics.median(rates) / 1e9, 2),
        "matmul_dtype": dtype_name(mixed_precision_dtype(device)),
        "shape": [size, size],
        "objects": int(labels.max()),
        "amp": mixed_precision_dtype(device) != torch.float32,
        "repeats": list(repeats),
        "matmul_gflops_per_s_all": [round(r / 1e9, 1) for r in rates],
        **environment(device, args.quick),
    }
    return report(result)


if __name__ == "__main__":
    main()
