"""Training step throughput of the default U-Net, and its FLOP rate against matmul.

One training step is what ``train_iter`` does per batch: forward, the weighted
cross-entropy, backward and an Adam step (mixed precision as in training: float16 on
CUDA, bfloat16 on a CPU with AMX; ``--no-amp`` for float32; channels-last maps on a
CPU, as in training). The network's FLOPs per
step are counted with ``torch.utils.flop_counter.FlopCounterMode``; the machine's matmul
rate at the step's precision is measured in the same process with 2048x2048
``torch.matmul`` (8192x8192 on CUDA). The headline is ``flops_fraction_of_matmul``: achieved FLOP/s of the
training step divided by the matmul FLOP/s measured just before and after that step
(median over the steps), so that machine speed and load cancel.
Prints one JSON object.

    python bench/bench_train_step.py                 # patch 256, batch 4, CPU
    python bench/bench_train_step.py --device auto   # CUDA when there is one
    python bench/bench_train_step.py --quick         # patch 64, batch 2
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from _common import dtype_name, environment, matmul_flops_per_s, report, synchronize, torch_device, torch_parser
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.core.device import autocast, grad_scaler, mixed_precision_dtype
from napari_unet.core.model import NetworkConfig, UNet
from napari_unet.core.normalize import Normalization
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.targets import border_weights, class_targets
from napari_unet.core.train import _loss, training_memory_format


def training_batch(batch: int, patch: int, seed: int = 0):
    """Normalized image patches with their class targets, weight maps and masks."""
    images, targets, weights = [], [], []
    for index in range(batch):
        image, labels = synthetic_nuclei((patch, patch), count=max(2, patch * patch // 2000), seed=seed + index)
        images.append(Normalization()(image[None]))
        targets.append(class_targets(labels))
        weights.append(border_weights(labels))
    return (
        torch.from_numpy(np.stack(images)),
        torch.from_numpy(np.stack(targets)).long(),
        torch.from_numpy(np.stack(weights)),
        torch.ones((batch, patch, patch), dtype=torch.bool),
    )


def main(argv=None) -> dict:
    parser = torch_parser(__doc__, "small patches, few steps, for smoke tests")
    parser.add_argument("--patch", type=int, default=None, help="patch edge (default 256; 64 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="patches per step (default 4; 2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 everywhere (training's default is float16 on CUDA, bfloat16 on a CPU with AMX)")
    args = parser.parse_args(argv)
    device = torch_device(parser, args)
    patch = args.patch or (64 if args.quick else 256)
    batch = args.batch or (2 if args.quick else 4)
    repeats = args.repeats or (2 if args.quick else 3 if device.type == "cpu" else 20)
    amp = not args.no_amp
    dtype = mixed_precision_dtype(device, amp)  # the matmul reference runs at the step's precision

    torch.manual_seed(0)
    network = UNet(NetworkConfig()).to(device, memory_format=training_memory_format(device))  # as train_iter
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    scaler = grad_scaler(device, amp)
    images, targets, weights, masks = (t.to(device) for t in training_batch(batch, patch))
    images = images.to(memory_format=training_memory_format(device))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = network(images)
        loss = _loss(logits, targets, weights, masks, 0.0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    # The first step counts the FLOPs (forward, loss, backward) and doubles as warm-up;
    # a GPU gets a few more warm-up steps (they are cheap there).
    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_step = counter.get_total_flops()
    for _ in range(0 if device.type == "cpu" else 3):
        step()
    synchronize(device)

    # Matmul interleaved with the steps: each step is compared with the matmul rate
    # measured just before and just after it, so that a change of machine load (a shared
    # machine) shows in both sides of the ratio.
    mm_groups = [matmul_flops_per_s(device, repeats=3, dtype=dtype)]
    step_times, fractions = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        step_times.append(time.perf_counter() - start)
        mm_groups.append(matmul_flops_per_s(device, repeats=3, dtype=dtype))
        around = statistics.median(mm_groups[-2] + mm_groups[-1])
        fractions.append(flops_per_step / step_times[-1] / around)
    mm_rates = [r for group in mm_groups for r in group]

    step_s = statistics.median(step_times)
    mm_rate = statistics.median(mm_rates)
    achieved = flops_per_step / step_s
    pixels = batch * patch * patch
    result = {
        "benchmark": "train_step",
        "flops_fraction_of_matmul": round(statistics.median(fractions), 3),
        "pixels_per_s": round(pixels / step_s),
        "megapixels_per_s": round(pixels / step_s / 1e6, 4),
        "patches_per_s": round(batch / step_s, 3),
        "step_seconds": round(step_s, 4),
        "achieved_gflops_per_s": round(achieved / 1e9, 2),
        "matmul_gflops_per_s": round(mm_rate / 1e9, 2),
        "matmul_dtype": dtype_name(dtype),
        "gflops_per_step": round(flops_per_step / 1e9, 2),
        "patch": patch,
        "batch": batch,
        "network": NetworkConfig().to_dict(),
        "amp": dtype != torch.float32,
        "step_seconds_all": [round(t, 4) for t in step_times],
        "flops_fraction_of_matmul_all": [round(f, 3) for f in fractions],
        "matmul_gflops_per_s_all": [round(r / 1e9, 1) for r in mm_rates],
        **environment(device, args.quick),
    }
    return report(result)


if __name__ == "__main__":
    main()
