"""Prediction throughput of the full pipeline, against a whole-image forward pass.

Times ``napari_unet.core.predict.predict`` (normalization, overlap-tile network passes,
stitching, post-processing to labels) on a generated nuclei image with the default
network (random He initialization; speed does not depend on training) and predict's default
tile size (1024 on a GPU, up to 2048 on a CPU as memory allows).
The peer is the plain whole-image forward pass of the same network (eval mode,
``torch.inference_mode``) on the normalized image mirror-padded by predict's
image border, which is the least network work that gives the same result. Headline:
``ratio = megapixels_per_s / peer_megapixels_per_s``. Also reported: the FLOP rate of
the tile loop as a fraction of the matmul FLOP/s at the network's precision (fp32, or
that of predict's mixed precision: float16 on CUDA, bfloat16 on a CPU with AMX, where
the peer runs under the same autocast) measured in the same process, and
the share of the time spent in each stage (post-processing in particular). Prints one
JSON object.

    python bench/bench_predict.py                        # CPU, 1024x1024 (about 1.5 min on 2 cores)
    python bench/bench_predict.py --size 2048            # CPU, 2048x2048 (several minutes on 2 cores)
    python bench/bench_predict.py --device auto          # CUDA when there is one, 2048x2048
    python bench/bench_predict.py --quick                # 256x256, for smoke tests
    python bench/bench_predict.py --model nuclei --compile   # predict(..., compile_network=True)
    python bench/bench_predict.py --model nuclei --tta       # test-time augmentation: 8 orientations

With ``--tta`` the pipeline's FLOPs are those of the eight orientations' tiles, so its
fraction of the matmul rate shows what averaging orientations costs beyond the network
(turning, copying, summing); the peer stays one plain whole-image pass.
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
from napari_unet.core.model import NetworkConfig
from napari_unet.core.normalize import as_planes
from napari_unet.core.postprocess import foreground_probability, probabilities_to_labels
from napari_unet.core.predict import ORIENTATIONS, _axis_tiling, default_tile_size, predict
from napari_unet.core.registry import load_model
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.targets import class_targets


def main(argv=None) -> dict:
    parser = torch_parser(__doc__, "256x256 image, for smoke tests")
    parser.add_argument("--size", type=int, default=None, help="image edge (default 2048 on CUDA, 1024 on CPU)")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile size of predict (default: predict's, 1024 on a GPU, up to 2048 on a CPU)")
    parser.add_argument("--batch", type=int, default=None, help="tiles per forward pass (default: predict's, 1 on a CPU and 4 on a GPU)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs of each (default 3 on CUDA and with --quick, 1 on CPU)"
    )
    parser.add_argument("--model", help="an embedded model's name or a model file (default: a new default network)")
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 everywhere (predict's default is float16 on CUDA, bfloat16 on a CPU with AMX)")
    parser.add_argument("--compile", action="store_true",
                        help="predict with compile_network=True (compiled once before the timed runs)")
    parser.add_argument("--tta", action="store_true", help="predict with test_time_augmentation=True")
    args = parser.parse_args(argv)
    device = torch_device(parser, args)
    size = args.size or (256 if args.quick else 2048 if device.type == "cuda" else 1024)
    repeats = args.repeats or (3 if device.type == "cuda" or args.quick else 1)
    amp = not args.no_amp
    dtype = mixed_precision_dtype(device, amp)  # the matmul reference runs at the network's precision

    image, labels = synthetic_nuclei((size, size), count=max(2, round(505 * size * size / 1024**2)), seed=0)
    torch.manual_seed(0)
    model = load_model(args.model) if args.model else Model.new(NetworkConfig())
    network = model.network.to(device).eval()
    normalized = model.normalization(as_planes(image, model.config.in_channels)[0])[0]
    padded, border = whole_image_input(network, normalized)
    tile = args.tile or default_tile_size(network, device)

    def peer():
        with torch.inference_mode(), autocast(device, amp):
            logits = network(torch.from_numpy(padded)[None].to(device))
        synchronize(device)
        return logits

    def ours(compile_network=args.compile):
        return timed_predict(model, image, tile_size=tile, batch_size=args.batch, device=device, amp=amp,
                             compile_network=compile_network, test_time_augmentation=args.tta)

    # Warm-up on a small image: allocator, thread pool, kernels.
    small = image[:64, :64]
    predict(model, small, tile_size=tile, batch_size=args.batch, device=device, amp=amp)
    with torch.inference_mode(), autocast(device, amp):
        network(torch.from_numpy(whole_image_input(network, normalized[:, :64, :64])[0])[None].to(device))
    compile_s = None
    if args.compile:  # compiling is once per tile shape: outside the timed runs, but reported
        start = time.perf_counter()
        ours()
        compile_s = time.perf_counter() - start
    if device.type == "cuda":  # cheap there: warm up at the real shapes
        ours()
        peer()

    normalize_s = normalize_seconds(model, image)

    # Work done: tiles of predict vs one padded whole image.
    rows = _axis_tiling(network, size, tile)
    cols = _axis_tiling(network, size, tile)
    tiles = rows.count * cols.count
    # (square images: every orientation is cut into the same tiles)
    tile_flops = tiles * forward_flops(model.config, rows.tile, cols.tile) * (ORIENTATIONS if args.tta else 1)
    peer_flops = forward_flops(model.config, *padded.shape[-2:])

    # Interleaved: matmul, ours, matmul, peer, matmul, ... Each run is compared with the
    # matmul rate measured just before and after it, and ours with the peer next to it,
    # so that load changes of a shared machine show on both sides of every ratio.
    before = matmul_flops_per_s(device, dtype=dtype)
    mm_rates = list(before)
    totals, loops, posts, peers, float32_rates = [], [], [], [], []
    ratios, network_fractions, peer_fractions = [], [], []
    uncompiled, uncompiled_fractions = [], []
    prediction = logits = None
    for _ in range(repeats):
        if args.compile:  # the same prediction uncompiled, next to each compiled run
            uncompiled.append(ours(compile_network=False)[1])
            uncompiled_fractions.append(tile_flops / uncompiled[-1] / statistics.median(matmul_flops_per_s(device, dtype=dtype)))
        prediction, seconds, post = ours()
        totals.append(seconds)
        loops.append(seconds - normalize_s - post)
        posts.append(post)
        middle = matmul_flops_per_s(device, dtype=dtype)
        start = time.perf_counter()
        logits = peer()
        peers.append(time.perf_counter() - start)
        after = matmul_flops_per_s(device, dtype=dtype)
        mm_rates += middle + after
        if dtype != torch.float32:  # target 2 of the speed issue is stated against float32
            float32_rates += matmul_flops_per_s(device)
        ratios.append(peers[-1] / totals[-1])
        network_fractions.append(tile_flops / loops[-1] / statistics.median(before + middle))
        peer_fractions.append(peer_flops / peers[-1] / statistics.median(middle + after))
        before = after

    total_s, loop_s, post_s, peer_s = (statistics.median(v) for v in (totals, loops, posts, peers))
    mm_rate = statistics.median(mm_rates)

    # Same result? Foreground probability of predict vs the center of the whole-image pass
    # (not comparable with an average over orientations).
    whole = torch.softmax(logits.float(), dim=1)[0, 0, border : border + size, border : border + size]
    difference = None if args.tta else float(np.max(np.abs(prediction.probability - (1.0 - whole.cpu().numpy()))))

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
        # The whole pipeline (normalization, tiles, post-processing) against the matmul rate,
        # counting the network FLOPs of the tiles it ran, and of one whole-image pass only.
        "pipeline_flops_fraction_of_matmul": round(tile_flops / total_s / mm_rate, 3),
        "pipeline_useful_flops_fraction_of_matmul": round(peer_flops / total_s / mm_rate, 3),
        # The same against float32's matmul rate, when the network runs at another precision.
        "pipeline_flops_fraction_of_float32_matmul": round(
            tile_flops / total_s / statistics.median(float32_rates or mm_rates), 3),
        "peer_flops_fraction_of_matmul": round(statistics.median(peer_fractions), 3),
        "tile_loop_gflops_per_s": round(tile_flops / loop_s / 1e9, 2),
        "peer_gflops_per_s": round(peer_flops / peer_s / 1e9, 2),
        "matmul_gflops_per_s": round(mm_rate / 1e9, 2),
        "matmul_dtype": dtype_name(dtype),
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
        "tile_step": rows.kept[0][1],
        "image_border": border,
        "network_gflops_tiles": round(tile_flops / 1e9, 1),
        "network_gflops_whole_image": round(peer_flops / 1e9, 1),
        "tile_work_over_whole_image": round(tile_flops / peer_flops, 3),
        "max_abs_difference_vs_whole_image": difference,
        "shape": [size, size],
        "model": args.model or "new default network",
        "amp": dtype != torch.float32,
        "compiled": args.compile,
        "test_time_augmentation": args.tta,
        # The first prediction, compiling included, minus a compiled one.
        "compile_seconds": None if compile_s is None else round(compile_s - total_s, 1),
        # Paired: each compiled run against the uncompiled run just before it.
        "speedup_over_uncompiled": round(statistics.median(u / t for u, t in zip(uncompiled, totals)), 3)
        if uncompiled else None,
        "uncompiled_pipeline_flops_fraction_of_matmul": round(statistics.median(uncompiled_fractions), 3)
        if uncompiled else None,
        "uncompiled_seconds_all": [round(t, 3) for t in uncompiled],
        "seconds_all": [round(t, 3) for t in totals],
        "peer_seconds_all": [round(t, 3) for t in peers],
        "matmul_gflops_per_s_all": [round(r / 1e9, 1) for r in mm_rates],
        **environment(device, args.quick),
    }
    return report(result)


if __name__ == "__main__":
    main()
