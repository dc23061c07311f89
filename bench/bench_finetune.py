"""Does fine-tuning the embedded ``nuclei`` model on 5 annotated images pay off?

What a user does in the Train widget, on real data: start from ``nuclei``, annotate 5
images, train for at most 3 minutes on the CPU with the widget's default settings
(patch 256, batch 4, the learning rate the core chooses for it, 0.0005, augmentation on,
the default validation split), then predict the rest. The peer is the same model
before fine-tuning, measured in the same process on the same images. Three kinds of
images:

- ``same_kind``: DSB2018 fluorescence nuclei from the fixed validation split that the
  ``nuclei`` model never saw (``scripts/splits/dsb2018-validation.txt``): 5 to fine-tune
  on, the other 75 to evaluate. Fine-tuning must not make them worse.
- ``dark_on_bright``: the same images with inverted contrast, dark nuclei on a bright
  background as in transmitted-light or hematoxylin stains; the model was only trained on
  bright nuclei. Fine-tuning must improve them clearly.
- ``em_cells``: the ISBI 2012 serial-section EM stack, whose cells (connected regions
  inside membranes) are a kind of object the model never saw: 5 slices (0-4) to
  fine-tune on, slices 16-19 to evaluate.

Each result has AP at IoU 0.5 and 0.75 (pooled over the images, TP/(TP+FP+FN)), the
per-image mean AP over IoU 0.5:0.05:0.95 and the pixel IoU, before and after, and the
ratio after/before of AP50. Needs ``../shared/data``. Prints one JSON object.

    python bench/bench_finetune.py                      # embedded nuclei model, 3 minutes per kind
    python bench/bench_finetune.py --model PATH --minutes 1
    python bench/bench_finetune.py --quick              # 20 s per kind, 10 evaluation images
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import environment, fine_tune, report, scores, torch_device, torch_parser
from scipy import ndimage

from napari_unet.core.registry import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "scripts" / "splits" / "dsb2018-validation.txt"
#: Images a user annotates.
FINE_TUNE_IMAGES = 5


def compare(model, kind: str, train_images, train_labels, test_images, test_labels, minutes, device,
            learning_rate) -> dict:
    before = scores(model, test_images, test_labels, device)
    tuned, training = fine_tune(model, train_images, train_labels, minutes, device, learning_rate=learning_rate)
    after = scores(tuned, test_images, test_labels, device)
    ratio = round(after["ap50"] / before["ap50"], 3) if before["ap50"] else None  # None: nothing found before
    print(f"{kind}: AP50 {before['ap50']:.3f} -> {after['ap50']:.3f}", file=sys.stderr)
    return {"kind": kind, "fine_tune_images": len(train_images), "test_images": len(test_images),
            "before": before, "after": after, "ap50_ratio_after_before": ratio, **training}


def dsb2018_validation(count: int | None) -> tuple[list, list]:
    names = SPLIT.read_text().split()
    if count:
        names = names[: FINE_TUNE_IMAGES + count]
    images = [tifffile.imread(DATA / "dsb2018" / "images" / name) for name in names]
    labels = [tifffile.imread(DATA / "dsb2018" / "labels" / name) for name in names]
    return images, labels


def main() -> None:
    parser = torch_parser(__doc__, "20 s of fine-tuning per kind and 10 evaluation images")
    parser.add_argument("--model", default="nuclei", help="embedded model name or model file (default: nuclei)")
    parser.add_argument("--minutes", type=float, default=3.0, help="fine-tuning budget per kind (default: 3)")
    parser.add_argument("--learning-rate", type=float,
                        help="Adam step size (default: the core's choice, as in the Train widget: 0.0005 here)")
    args = parser.parse_args()
    device = str(torch_device(parser, args))
    if not DATA.is_dir():
        parser.error(f"the real data folder {DATA} is missing")
    minutes = 20 / 60 if args.quick else args.minutes
    model = load_model(args.model)

    # Which 5 are annotated is drawn once, so every kind uses the same images.
    images, labels = dsb2018_validation(10 if args.quick else None)
    chosen = set(np.random.default_rng(0).choice(len(images), FINE_TUNE_IMAGES, replace=False).tolist())
    train = [i for i in range(len(images)) if i in chosen]
    test = [i for i in range(len(images)) if i not in chosen]
    results = []
    results.append(compare(model, "same_kind", [images[i] for i in train], [labels[i] for i in train],
                           [images[i] for i in test], [labels[i] for i in test], minutes, device, args.learning_rate))
    inverted = [np.iinfo(image.dtype).max - image if image.dtype.kind == "u" else -image for image in images]
    results.append(compare(model, "dark_on_bright", [inverted[i] for i in train], [labels[i] for i in train],
                           [inverted[i] for i in test], [labels[i] for i in test], minutes, device, args.learning_rate))

    volume = tifffile.imread(DATA / "isbi2012" / "volume.tif")
    cells = np.stack([ndimage.label(plane > 0)[0] for plane in tifffile.imread(DATA / "isbi2012" / "labels.tif")])
    em_train, em_test = list(range(FINE_TUNE_IMAGES)), [16, 17, 18, 19][: 2 if args.quick else 4]
    results.append(compare(model, "em_cells", [volume[i] for i in em_train], [cells[i] for i in em_train],
                           [volume[i] for i in em_test], [cells[i] for i in em_test], minutes, device,
                           args.learning_rate))

    report({"benchmark": "fine-tune nuclei on 5 images", "model": args.model, "minutes_per_kind": round(minutes, 2),
            "results": results, **environment(torch.device(device), args.quick)})


if __name__ == "__main__":
    main()
