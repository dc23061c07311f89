"""Prediction throughput against MONAI's sliding-window inference, on real data.

A user holding the same trained weights could run MONAI's ``sliding_window_inference``
over the plain eval-mode network instead of ``napari_unet``'s prediction. This script
gives both the same job and times them interleaved in one process: the embedded
``nuclei`` model; the same tile size (1024, predict's default), MONAI's default overlap
(0.25) and blending, the same tiles per forward pass (predict's default: 1 on a CPU, 4
on a GPU); and on the peer's side the model's own normalization before and the
project's post-processing (with the model's threshold) after, so that both produce
labels. The images are mosaics of 256x256 crops of the held-out DSB2018
validation images (``scripts/splits/dsb2018-validation.txt``, never trained on), with
their ground truth: a 2048x2048 image and a stack of 20 planes of 1024x1024.

Headline per case: ``ratio = peer_seconds / seconds`` (median over the repeats), and the
AP at IoU 0.5 (pooled) of both against the ground truth, which must be as good. MONAI
is a benchmark-only dependency (``pip install monai``). Prints one JSON object.

    python bench/bench_monai.py               # CPU: about 5 minutes on 2 cores
    python bench/bench_monai.py --device auto # CUDA when there is one (mixed precision on both sides)
    python bench/bench_monai.py --quick       # 512x512 and 2 planes of 256x256, one repeat
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import dtype_name, environment, report, synchronize, torch_device, torch_parser

from napari_unet.core.device import autocast, mixed_precision_dtype
from napari_unet.core.metrics import average_precision
from napari_unet.core.postprocess import probabilities_to_labels
from napari_unet.core.predict import default_tiles_per_pass, predict
from napari_unet.core.registry import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "scripts" / "splits" / "dsb2018-validation.txt"


def validation_crops(crop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-left ``crop`` x ``crop`` parts of the validation images, each scaled to its own 1-99.8 percentiles."""
    crops = []
    for name in SPLIT.read_text().split():
        image = tifffile.imread(DATA / "dsb2018" / "images" / name)
        labels = tifffile.imread(DATA / "dsb2018" / "labels" / name)
        if image.ndim != 2 or min(image.shape) < crop:
            continue
        image = image[:crop, :crop].astype(np.float32)
        low, high = np.percentile(image, (1, 99.8))
        # Crops from different microscopes side by side: bring them to one intensity range.
        crops.append(((image - low) / max(high - low, 1e-6), labels[:crop, :crop]))
    return crops


def mosaic(crops: list, side: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` x ``side`` mosaic of crops starting at crop ``first``, with labels kept apart."""
    crop = crops[0][0].shape[0]
    cells = side // crop
    image = np.zeros((side, side), np.float32)
    labels = np.zeros((side, side), np.int32)
    for index in range(cells * cells):
        crop_image, crop_labels = crops[(first + index) % len(crops)]
        y, x = (index // cells) * crop, (index % cells) * crop
        image[y : y + crop, x : x + crop] = crop_image
        labels[y : y + crop, x : x + crop] = np.where(crop_labels > 0, crop_labels + labels.max(), 0)
    return image, labels


def monai_labels(model, network, stack: np.ndarray, tile: int, device: torch.device, amp: bool) -> np.ndarray:
    """What a user would write: normalize, slide MONAI's window over the network, post-process."""
    from monai.inferers import sliding_window_inference

    out = np.zeros(stack.shape, np.int32)
    for index, plane in enumerate(stack):
        normalized = torch.from_numpy(model.normalization(plane[None]))[None].to(device)
        with torch.inference_mode(), autocast(device, amp):
            logits = sliding_window_inference(normalized, (tile, tile), default_tiles_per_pass(device), network, overlap=0.25)
        probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        out[index] = probabilities_to_labels(probabilities, model.threshold, 10, model.gap)
    return out


def ap50(truth: np.ndarray, predicted: np.ndarray) -> float:
    return round(average_precision(list(truth), list(predicted))["ap_pooled"][0], 4)


def compare(case: str, model, network, stack, truth, tile: int, device, repeats: int, amp: bool) -> dict:
    seconds, peer_seconds, ratios = [], [], []
    ours = peer = None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        ours = predict(model, stack if len(stack) > 1 else stack[0], tile_size=tile, batch_size=default_tiles_per_pass(device),
                       device=device, amp=amp).labels.reshape(stack.shape)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        peer = monai_labels(model, network, stack, tile, device, amp)
        synchronize(device)
        peer_seconds.append(time.perf_counter() - start)
        ratios.append(peer_seconds[-1] / seconds[-1])
    result = {
        "case": case,
        "shape": list(stack.shape) if len(stack) > 1 else list(stack.shape[1:]),
        "ratio": round(statistics.median(ratios), 3),
        "seconds": round(statistics.median(seconds), 3),
        "peer_seconds": round(statistics.median(peer_seconds), 3),
        "megapixels_per_s": round(stack.size / 1e6 / statistics.median(seconds), 3),
        "peer_megapixels_per_s": round(stack.size / 1e6 / statistics.median(peer_seconds), 3),
        "ap50": ap50(truth, ours),
        "peer_ap50": ap50(truth, peer),
        "ratios": [round(r, 3) for r in ratios],
    }
    print(f"{case}: {result['ratio']}x MONAI, AP50 {result['ap50']} vs {result['peer_ap50']}", file=sys.stderr)
    return result


def main() -> None:
    parser = torch_parser(__doc__, "512x512 and 2 planes of 256x256, tile 256, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs per case (default 3 on CUDA, 2 on CPU)")
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 on both sides (default: predict's mixed precision on both sides)")
    args = parser.parse_args()
    device = torch_device(parser, args)
    if not DATA.is_dir():
        parser.error(f"the real data folder {DATA} is missing")
    try:
        import monai  # noqa: F401
    except ImportError:
        parser.error("MONAI is needed for this comparison: pip install monai")
    repeats = args.repeats or (1 if args.quick else 3 if device.type == "cuda" else 2)
    crop, tile = (128, 256) if args.quick else (256, 1024)
    model = load_model("nuclei")
    # The peer's network: the plain eval-mode model, as loaded.
    network = copy.deepcopy(model.network).to(device).eval()
    crops = validation_crops(crop)
    image_side, stack_side, planes = (512, 256, 2) if args.quick else (2048, 1024, 20)

    # Warm-up on both sides: allocator, thread pool, kernels.
    warm, _ = mosaic(crops, stack_side, 0)
    amp = not args.no_amp
    predict(model, warm, tile_size=tile, batch_size=default_tiles_per_pass(device), device=device, amp=amp)
    monai_labels(model, network, warm[None], tile, device, amp)

    image, image_truth = mosaic(crops, image_side, 0)
    stack, stack_truth = zip(*(mosaic(crops, stack_side, plane * 7) for plane in range(planes)))
    results = [
        compare(f"image {image_side}x{image_side}", model, network, image[None], image_truth[None], tile, device, repeats,
                amp),
        compare(f"stack {planes}x{stack_side}x{stack_side}", model, network, np.stack(stack), np.stack(stack_truth),
                tile, device, repeats, amp),
    ]
    report({"benchmark": "prediction vs MONAI sliding_window_inference", "model": "nuclei", "tile": tile,
            "batch": default_tiles_per_pass(device), "overlap_peer": 0.25, "crops": len(crops),
            "precision": dtype_name(mixed_precision_dtype(device, amp)), "results": results,
            **environment(device, args.quick)})


if __name__ == "__main__":
    main()
