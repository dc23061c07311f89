"""Augmentation throughput against what a training step consumes.

Training draws a batch of windows on the CPU (``train._PatchSampler``) in a second thread
while the step before runs (``train._BatchesAhead``), moves it to the training device and
deforms it there (``augment.augment_batch``), then takes one optimizer step. This script
times both on the same batch as ``train_iter`` builds it (patch 256, batch 4, default
augmentation, default network): (a) what the training loop waits for between two steps
(taking the batch drawn ahead during the step just timed, plus moving and augmenting it),
in patches/s, and (b) the training step (forward, weighted cross-entropy, backward,
Adam), in patches/s. The headline is ``ratio = (a) / (b)``; the project target is >= 3,
so that the data pipeline adds at most a quarter to the time of a step.
``ratio_one_after_the_other`` is the same with sampling not drawn ahead (as training ran
until 2026-11-26). The weight maps and normalization are prepared once per image before
training and are reported separately (``prepare_seconds``). Prints one JSON object.

    python bench/bench_augment.py                 # CPU
    python bench/bench_augment.py --device auto   # CUDA when there is one
    python bench/bench_augment.py --quick         # patch 64, batch 2
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from _common import environment, report, synchronize, torch_device, torch_parser

from napari_unet.core.augment import augment_batch
from napari_unet.core.bundle import Model
from napari_unet.core.device import autocast, grad_scaler, mixed_precision_dtype
from napari_unet.core.model import NetworkConfig
from napari_unet.core.normalize import as_planes
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import (
    SCRATCH_LEARNING_RATE,
    TrainingConfig,
    _BatchesAhead,
    _center_crop,
    _loss,
    _PatchSampler,
    _prepare_plane,
    training_memory_format,
)


def timed(function, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = torch_parser(__doc__, "small patches, few repeats, for smoke tests")
    parser.add_argument("--patch", type=int, default=None, help="patch size (default 256; 64 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="patches per step (default 4; 2 with --quick)")
    parser.add_argument("--image", type=int, default=1024, help="edge of the generated training image")
    parser.add_argument("--repeats", type=int, default=None, help="timed training steps (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--augment-repeats", type=int, default=20, help="timed sample+augment batches")
    args = parser.parse_args(argv)
    device = torch_device(parser, args)
    patch = args.patch or (64 if args.quick else 256)
    batch = args.batch or (2 if args.quick else 4)
    size = 512 if args.quick else args.image
    repeats = args.repeats or (2 if args.quick else 3 if device.type == "cpu" else 20)
    augment_repeats = 5 if args.quick else args.augment_repeats

    config = TrainingConfig(patch_size=patch, batch_size=batch, learning_rate=SCRATCH_LEARNING_RATE, device=str(device))
    torch.manual_seed(config.seed)
    model = Model.new(NetworkConfig())
    network = model.network.to(device, memory_format=training_memory_format(device))  # as train_iter

    # As train_iter: the input and output sizes, and the larger window that augmentation
    # deforms so that rotation and deformation pull in real context.
    input_size = network.valid_input_size(config.patch_size)
    output_size = network.output_size(input_size)
    window = input_size + 2 * (input_size // 4 + int(3 * config.augment.elastic_sigma))

    image, labels = synthetic_nuclei((size, size), count=max(2, round(505 * size * size / 1024**2)), seed=0)
    planes, _ = as_planes(image, model.config.in_channels)
    start = time.perf_counter()
    plane = _prepare_plane(model, config, model.normalization(planes[0]), labels, np.ones(labels.shape, bool), window)
    prepare_seconds = time.perf_counter() - start
    sampler = _PatchSampler([plane], window, np.random.default_rng(config.seed))
    ahead = _BatchesAhead(_PatchSampler([plane], window, np.random.default_rng(config.seed)))
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    def sample():
        return tuple(torch.from_numpy(a).to(device, non_blocking=True) for a in sampler(batch))

    def sample_ahead():
        return tuple(torch.from_numpy(a).to(device, non_blocking=True) for a in ahead(batch))

    def augment(tensors):
        images, targets, weights, masks = augment_batch(*tensors, (input_size, input_size), config.augment, generator)
        targets, weights, masks = (_center_crop(t, output_size) for t in (targets, weights, masks))
        return images, targets, weights, masks

    amp = config.amp  # as training: float16 on CUDA, bfloat16 on a CPU with AMX
    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = grad_scaler(device, amp)
    fixed = sample()
    step_batch = augment(fixed)

    def train_step():
        images, targets, weights, masks = step_batch
        images = images.to(memory_format=training_memory_format(device))
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = network(images)
        loss = _loss(logits, targets, weights, masks, config.dice_weight)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    # Warm-up of every part.
    network.train()
    for _ in range(3):
        augment(sample())
    for _ in range(1 if device.type == "cpu" else 3):
        train_step()
    synchronize(device)

    # Interleaved: a share of the augmentation runs between the training steps. After each
    # step, the wait for the batch drawn ahead during it, as the training loop waits.
    ahead(batch)  # the first batch, drawn before any step
    pipeline, waits, sampling, augment_only, steps = [], [], [], [], []
    chunk = max(1, augment_repeats // (repeats + 1))
    try:
        for index in range(repeats + 1):
            pipeline += timed(lambda: augment(sample()), chunk, device)
            sampling += timed(sample, chunk, device)
            augment_only += timed(lambda: augment(fixed), chunk, device)
            if index < repeats:
                steps += timed(train_step, 1, device)
                waits += timed(lambda: augment(sample_ahead()), 1, device)
    finally:
        ahead.close()

    pipeline_s = statistics.median(pipeline)
    wait_s = statistics.median(waits)
    step_s = statistics.median(steps)
    result = {
        "benchmark": "augment",
        "ratio": round(step_s / wait_s, 2),
        "meets_target": step_s / wait_s >= 3.0,
        "ratio_one_after_the_other": round(step_s / pipeline_s, 2),
        "augment_patches_per_s": round(batch / wait_s, 2),
        "train_step_patches_per_s": round(batch / step_s, 3),
        "augment_share_of_step": round(wait_s / (wait_s + step_s), 4),
        "wait_between_steps_seconds": round(wait_s, 5),
        "sample_augment_seconds": round(pipeline_s, 5),
        "sample_seconds": round(statistics.median(sampling), 5),
        "augment_only_seconds": round(statistics.median(augment_only), 5),
        "train_step_seconds": round(step_s, 4),
        "prepare_seconds": round(prepare_seconds, 3),
        "patch": patch,
        "batch": batch,
        "window": window,
        "image": [size, size],
        "amp": mixed_precision_dtype(device, amp) != torch.float32,
        "train_step_seconds_all": [round(t, 4) for t in steps],
        "augment_repeats": len(pipeline),
        **environment(device, args.quick),
    }
    return report(result)


if __name__ == "__main__":
    main()
