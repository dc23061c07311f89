"""The CPU inference copy with oneDNN's fused convolutions, against the same copy without them.

Prediction on the CPU runs ``UNet.inference_copy(cpu)``, whose blocks fuse each ReLU
and each skip concatenation into a convolution (``napari_unet.core.onednn``). The peer
is ``inference_copy(cpu, fuse=False)``: the same folded, channels-last network with
PyTorch's plain blocks, as before the fusion. The two run one after the other on the
same input, pair after pair, so that both see the same load. Headline per plane size:
``speedup`` = the median over the pairs of plain seconds / fused seconds; also the
largest difference between their outputs. Network only (no tiling or post-processing:
``bench_predict.py`` measures the whole pipeline). Prints one JSON object.

    python bench/bench_cpu_fusion.py                 # nuclei network, 512, 1024 and 2048 px planes
    python bench/bench_cpu_fusion.py --quick         # 256 px, two pairs, for smoke tests
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import environment, report, torch_device, torch_parser

from napari_unet.core import onednn
from napari_unet.core.registry import load_model


def main(argv=None) -> dict:
    parser = torch_parser(__doc__, "a 256x256 plane and two pairs, for smoke tests")
    parser.add_argument("--model", default="nuclei", help="embedded model or model file (default nuclei)")
    parser.add_argument("--pairs", type=int, default=7, help="plain/fused pairs per size (default 7; 4 at 2048)")
    args = parser.parse_args(argv)
    device = torch_device(parser, args)
    if device.type != "cpu":
        parser.error("the fused convolutions are the CPU's; run with --device cpu")
    network = load_model(args.model).network
    plain = network.inference_copy(device, fuse=False)
    fused = network.inference_copy(device)
    result: dict = {"benchmark": "cpu_fusion", "model": args.model, "fused_available": onednn.available()}
    for size in (256,) if args.quick else (512, 1024, 2048):
        pairs = 2 if args.quick else (args.pairs if size < 2048 else max(2, args.pairs // 2))
        image = torch.rand(1, network.config.in_channels, size, size).to(memory_format=torch.channels_last)
        plain_seconds, fused_seconds = [], []
        with torch.inference_mode():
            difference = (plain(image) - fused(image)).abs().max().item()  # also the warm-up
            for _ in range(pairs):
                for copy, seconds in ((plain, plain_seconds), (fused, fused_seconds)):
                    start = time.perf_counter()
                    copy(image)
                    seconds.append(time.perf_counter() - start)
        speedups = [a / b for a, b in zip(plain_seconds, fused_seconds)]
        result[str(size)] = {
            "speedup": round(statistics.median(speedups), 3),
            "plain_seconds": round(statistics.median(plain_seconds), 4),
            "fused_seconds": round(statistics.median(fused_seconds), 4),
            "speedups": [round(value, 3) for value in speedups],
            "max_abs_difference": difference,
        }
    result.update(environment(device, args.quick))
    return report(result)


if __name__ == "__main__":
    main()
