"""Does fine-tuning carry to a kind of image the model never saw? Leave one modality out.

For each kind of image, a model that was never trained on that kind is fine-tuned as a
user does in the Train widget (a few annotated images, at most 3 minutes on the CPU, the
widget's default settings, which the core chooses), then scored on the other images of
that kind. The peer is the same model before fine-tuning, in the same process, on the same
images. The images come from the fixed validation splits of ``scripts/splits/``, which
no embedded model trained on:

- ``he_tissue``: H&E-stained tissue (DSB2018, RGB): 5 annotated, 7 scored; from the
  fluorescence network of ``nuclei`` alone (without ``nuclei-he``), which reads colour
  as gray.
- ``phase_contrast``: whole cells in phase contrast (Usiigaci): 3 annotated, 3 scored;
  from ``nuclei``.
- ``dark_on_bright``: DSB2018 fluorescence nuclei with inverted contrast, as in
  brightfield: 5 annotated, 75 scored; from ``nuclei``.
- ``em_cells``: ISBI 2012 EM cells, slices 0-4 annotated, 16-19 scored; from ``nuclei``.

Each result has AP at IoU 0.5 and 0.75 (pooled), the per-image mean AP over IoU
0.5:0.05:0.95 and the pixel IoU, before and after. Needs ``../shared/data``. Prints one
JSON object.

With ``--start closest`` each kind starts instead from the embedded model that the Train
widget starts from by default: the one whose predictions match the annotated images best
(``napari_unet.core.model_choice``), as a user with these images gets it (``cells`` for
phase contrast, ``nuclei`` with ``nuclei-he`` for tissue).

    python bench/bench_modality.py                          # every kind, 3 minutes each
    python bench/bench_modality.py --kinds he_tissue phase_contrast --minutes 1
    python bench/bench_modality.py --quick                  # 20 s per kind
    python bench/bench_modality.py --batch-norm keep        # the starting model's batch-norm statistics kept
    python bench/bench_modality.py --start closest          # from the embedded model closest to the images
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import environment, fine_tune, report, scores, torch_device, torch_parser
from scipy import ndimage

from napari_unet.core.model_choice import closest_embedded_model
from napari_unet.core.registry import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLITS = ROOT / "scripts" / "splits"
KINDS = ("he_tissue", "phase_contrast", "dark_on_bright", "em_cells")


def split_pairs(dataset: str, listing: str, annotated: int) -> tuple[list, list, list, list]:
    """Images and labels of a validation split: the first ``annotated`` of a fixed draw, and the rest."""
    names = (SPLITS / listing).read_text().split()
    chosen = set(np.random.default_rng(0).choice(len(names), annotated, replace=False).tolist())
    images = [tifffile.imread(DATA / dataset / "images" / name) for name in names]
    labels = [tifffile.imread(DATA / dataset / "labels" / name) for name in names]
    train = [i for i in range(len(names)) if i in chosen]
    test = [i for i in range(len(names)) if i not in chosen]
    return ([images[i] for i in train], [labels[i] for i in train], [images[i] for i in test],
            [labels[i] for i in test])


def kind_data(kind: str) -> tuple[list, list, list, list]:
    """Annotated images and labels, then scored images and labels, of one kind."""
    if kind == "he_tissue":
        return split_pairs("dsb2018_color", "dsb2018-color-validation.txt", 5)
    if kind == "phase_contrast":
        return split_pairs("usiigaci", "usiigaci-validation.txt", 3)
    if kind == "dark_on_bright":
        images, labels, test_images, test_labels = split_pairs("dsb2018", "dsb2018-validation.txt", 5)
        inverted = [[np.iinfo(image.dtype).max - image for image in group] for group in (images, test_images)]
        return inverted[0], labels, inverted[1], test_labels
    volume = tifffile.imread(DATA / "isbi2012" / "volume.tif")
    cells = np.stack([ndimage.label(plane > 0)[0] for plane in tifffile.imread(DATA / "isbi2012" / "labels.tif")])
    train, test = range(5), (16, 17, 18, 19)
    return [volume[i] for i in train], [cells[i] for i in train], [volume[i] for i in test], [cells[i] for i in test]


#: ``--batch-norm``: the core's choice, or its statistics kept or re-estimated whatever the start.
FREEZE_NORM = {"auto": None, "keep": True, "adapt": False}


def main() -> None:
    parser = torch_parser(__doc__, "20 s of fine-tuning per kind")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="kinds of image (default: all)")
    parser.add_argument("--minutes", type=float, default=3.0, help="fine-tuning budget per kind (default: 3)")
    parser.add_argument("--batch-norm", choices=sorted(FREEZE_NORM), default="auto",
                        help="batch-norm statistics: the core's choice (default), kept, or re-estimated")
    parser.add_argument("--learning-rate", type=float, help="instead of the core's choice (to compare)")
    parser.add_argument("--start", choices=("unseen", "closest"), default="unseen",
                        help="a model that never saw the kind (default), or the embedded model closest to the images")
    args = parser.parse_args()
    device = str(torch_device(parser, args))
    if not DATA.is_dir():
        parser.error(f"the real data folder {DATA} is missing")
    minutes = 20 / 60 if args.quick else args.minutes
    start_model = load_model("nuclei")
    start_model.colour_model = None  # the fluorescence network alone: it never saw stained tissue
    start_name = "nuclei (fluorescence network)"
    results = []
    for kind in args.kinds:
        images, labels, test_images, test_labels = kind_data(kind)
        if args.start == "closest":
            annotated = [(image, truth, None) for image, truth in zip(images, labels)]
            choice = closest_embedded_model(annotated, device)
            start_model, start_name = choice.model(), str(choice)
        before = scores(start_model, test_images, test_labels, device)
        tuned, training = fine_tune(start_model, images, labels, minutes, device,
                                    freeze_norm=FREEZE_NORM[args.batch_norm], learning_rate=args.learning_rate)
        after = scores(tuned, test_images, test_labels, device)
        print(f"{kind}: AP50 {before['ap50']:.3f} -> {after['ap50']:.3f} in {training['steps']} steps", file=sys.stderr)
        results.append({"kind": kind, "start_model": start_name,
                        "annotated_images": len(images), "scored_images": len(test_images),
                        "before": before, "after": after, **training})
    report({"benchmark": "fine-tune on a modality the model never saw" if args.start == "unseen"
            else "fine-tune from the embedded model closest to the images", "start": args.start, "learning_rate": args.learning_rate,
            "minutes_per_kind": round(minutes, 2), "batch_norm": args.batch_norm, "results": results,
            **environment(torch.device(device), args.quick)})


if __name__ == "__main__":
    main()
