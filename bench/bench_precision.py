"""Mixed precision against float32: prediction speed and the embedded models' accuracy, on real data.

``predict`` runs its network in mixed precision by default where the device is faster
with it (float16 on CUDA, bfloat16 on a CPU with Intel AMX; see
``napari_unet.core.device.mixed_precision_dtype``) and in float32 with ``amp=False``
(``--float32`` on the command line). This script predicts the same held-out images both
ways, interleaved image by image so that a change of machine load hits both sides:

* ``nuclei`` on the held-out DSB2018 validation images
  (``scripts/splits/dsb2018-validation.txt``, never trained on), scored by AP at IoU 0.5
  and 0.75 (pooled) and the mean of the per-image APs over IoU 0.5 to 0.95;
* ``em-neurites`` on the held-out ISBI 2012 slices 16 to 19, scored by AP50 of the cells
  and the challenge's pixel error and foreground-restricted Rand score (V-Rand).

Headline: ``speedup`` = float32 seconds / mixed-precision seconds over all images of a
model (its whole prediction: normalization, tiles and labels), with the accuracy of
both; ``precision`` names what mixed precision means on this device (float32 on both
sides where it means nothing: the speedup is then noise around 1). Also
``identical_label_images``: how many images got the very same labels both ways.
Prints one JSON object.

    python bench/bench_precision.py                # CPU: about half a minute on 2 cores with AMX
    python bench/bench_precision.py --device auto  # CUDA when there is one
    python bench/bench_precision.py --quick        # 8 images and 2 slices
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import dtype_name, environment, report, synchronize, torch_device, torch_parser
from scipy import ndimage

from napari_unet.core.device import mixed_precision_dtype
from napari_unet.core.metrics import average_precision, isbi_scores
from napari_unet.core.predict import predict
from napari_unet.core.registry import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "scripts" / "splits" / "dsb2018-validation.txt"
EM_SLICES = slice(16, 20)  # the ones em-neurites was validated on, never trained on


def both_ways(model_name: str, images: list[np.ndarray], device: torch.device) -> tuple[list, list, float, float]:
    """Labels of every image in float32 and in mixed precision, and the seconds each took in all."""
    model = load_model(model_name)
    predict(model, images[0], device=device, amp=False)  # warm-up: both inference copies, thread pools
    predict(model, images[0], device=device)
    exact, mixed, exact_seconds, mixed_seconds = [], [], 0.0, 0.0
    for image in images:
        for amp, labels in ((False, exact), (True, mixed)):
            synchronize(device)
            start = time.perf_counter()
            labels.append(predict(model, image, device=device, amp=amp).labels)
            synchronize(device)
            elapsed = time.perf_counter() - start
            if amp:
                mixed_seconds += elapsed
            else:
                exact_seconds += elapsed
    return exact, mixed, exact_seconds, mixed_seconds


def comparison(exact: list, mixed: list, exact_seconds: float, mixed_seconds: float, scores) -> dict:
    return {
        "speedup": round(exact_seconds / mixed_seconds, 3),
        "float32": scores(exact),
        "mixed": scores(mixed),
        "float32_seconds": round(exact_seconds, 2),
        "mixed_seconds": round(mixed_seconds, 2),
        "identical_label_images": f"{sum(np.array_equal(a, b) for a, b in zip(exact, mixed))}/{len(exact)}",
    }


def main() -> None:
    parser = torch_parser(__doc__, "8 DSB2018 images and 2 ISBI slices")
    args = parser.parse_args()
    device = torch_device(parser, args)
    if not DATA.is_dir():
        parser.error(f"the real data folder {DATA} is missing")

    names = SPLIT.read_text().split()[: 8 if args.quick else None]
    images = [tifffile.imread(DATA / "dsb2018" / "images" / name) for name in names]
    truths = [tifffile.imread(DATA / "dsb2018" / "labels" / name) for name in names]

    def nuclei_scores(predictions: list) -> dict:
        ap = average_precision(truths, predictions)
        thresholds = ap["thresholds"]
        return {"ap50": round(ap["ap_pooled"][thresholds.index(0.5)], 4),
                "ap75": round(ap["ap_pooled"][thresholds.index(0.75)], 4),
                "mean_ap_0.5_0.95": round(float(np.mean(ap["ap_mean"])), 4)}

    slices = slice(EM_SLICES.start, EM_SLICES.start + 2) if args.quick else EM_SLICES
    volume = tifffile.imread(DATA / "isbi2012" / "volume.tif")[slices]
    interiors = tifffile.imread(DATA / "isbi2012" / "labels.tif")[slices]
    cells = [ndimage.label(interior > 0)[0] for interior in interiors]

    def em_scores(predictions: list) -> dict:
        isbi = isbi_scores(np.stack(cells), np.stack(predictions))
        return {"ap50": round(average_precision(cells, predictions)["ap_pooled"][0], 4),
                "pixel_error": round(isbi["pixel_error"], 4), "v_rand": round(isbi["v_rand"], 4)}

    report({
        "benchmark": "precision",
        "precision": dtype_name(mixed_precision_dtype(device)),
        "nuclei": {"images": len(images), **comparison(*both_ways("nuclei", images, device), nuclei_scores)},
        "em_neurites": {"slices": len(cells), **comparison(*both_ways("em-neurites", list(volume), device), em_scores)},
        **environment(device, args.quick),
    })


if __name__ == "__main__":
    main()
