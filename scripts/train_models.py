"""Train, validate and embed the models shipped with napari-unet.

Reruns the recipe of docs/models.md with the project's own command line:

    python scripts/train_models.py nuclei --minutes 70
    python scripts/train_models.py cells --minutes 85 --init nuclei
    python scripts/train_models.py nuclei-he --minutes 75 --init nuclei
    python scripts/train_models.py em-neurites --minutes 5.7 --device cuda
    python scripts/train_models.py nuclei --minutes 70 --no-embed   # train and report only
    python scripts/train_models.py nuclei --embed-only              # then embed what it reported

Each run splits the data of ``../shared/data`` into training and validation images
(fixed: the validation names are listed in ``scripts/splits/``), lays the split out as
symbolic links or subset stacks in a work folder outside the repository (the data are
never copied into it), runs ``napari-unet train``, then ``napari-unet predict`` (plain
and with ``--tta``) and ``napari-unet evaluate`` on the validation images, and finally
writes the model with its description and validation figures to
``src/napari_unet/models/NAME.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLITS = ROOT / "scripts" / "splits"
EMBEDDED = ROOT / "src" / "napari_unet" / "models"

#: Images of dsb2018 kept for validation (never trained on), and the seed that drew them.
NUCLEI_VALIDATION_COUNT = 80
NUCLEI_SPLIT_SEED = 2018
#: Slices of the ISBI 2012 training volume kept for validation.
EM_VALIDATION_SLICES = (16, 17, 18, 19)

RECIPES = {
    "nuclei": {
        "description": "Fluorescence nuclei (DAPI/Hoechst-like), 3 classes: background, interior, boundary",
        "training_data": "DSB2018 stage1_train fluorescence images (BBBC038, CC0), except the "
        f"{NUCLEI_VALIDATION_COUNT} held out for validation (scripts/splits/dsb2018-validation.txt)",
        "train": ["--classes", "3", "--depth", "4", "--base-width", "16", "--patch-size", "192",
                  "--batch-size", "8", "--learning-rate", "0.001", "--schedule", "cosine",
                  "--steps-per-epoch", "250", "--seed", "0"],
    },
    "cells": {
        "description": "Whole cells in phase contrast (adherent cells at 10x), 3 classes: background, "
        "interior, boundary",
        "training_data": "Usiigaci phase-contrast training images (oist/Usiigaci, MIT), except the 6 held "
        "out for validation (scripts/splits/usiigaci-validation.txt)",
        "train": ["--classes", "3", "--depth", "4", "--base-width", "16", "--patch-size", "256",
                  "--batch-size", "4", "--learning-rate", "0.0005", "--schedule", "cosine",
                  "--steps-per-epoch", "150", "--seed", "0"],
    },
    "nuclei-he": {
        "description": "Nuclei in H&E and other haematoxylin-stained tissue (RGB), read through the "
        "haematoxylin stain; 3 classes: background, interior, boundary",
        "training_data": "DSB2018 stage1_train H&E tissue images (BBBC038, CC0), except the 12 held out "
        "for validation (scripts/splits/dsb2018-color-validation.txt), each also with 4 copies of other "
        "stain colours and magnifications",
        "train": ["--classes", "3", "--depth", "4", "--base-width", "16", "--patch-size", "192",
                  "--batch-size", "4", "--learning-rate", "0.0005", "--schedule", "cosine",
                  "--steps-per-epoch", "200", "--seed", "0"],
    },
    "em-neurites": {
        "description": "Serial-section EM cell membranes and neurites (as in the U-Net paper), "
        "2 classes: membrane, cell interior",
        "training_data": "ISBI 2012 EM segmentation challenge training volume, slices 0-15 "
        "(slices 16-19 kept for validation)",
        "train": ["--classes", "2", "--depth", "4", "--base-width", "16", "--patch-size", "256",
                  "--batch-size", "16", "--learning-rate", "0.001", "--schedule", "cosine",
                  "--steps-per-epoch", "150", "--w0", "10", "--sigma", "5",
                  "--pixel-size", "0.004", "0.004", "--seed", "0"],
    },
}


def napari_unet(*arguments: str, threads: int | None = None) -> None:
    """Run the project's command line, as a user would, and stop on failure."""
    environment = dict(os.environ)
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "napari_unet", *arguments]
    print("+ napari-unet " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True, env=environment)


def _link_pairs(names: list[str], source: Path, target: Path) -> None:
    for kind in ("images", "labels"):
        folder = target / kind
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            link = folder / name
            if not link.exists():
                link.symlink_to(source / kind / name)


def listed_split(work: Path, dataset: str, listing: str, count: int, seed: int) -> tuple[Path, Path]:
    """Training and validation folders of symbolic links into ``dataset``, split by a fixed list.

    The list (``scripts/splits/<listing>``) is drawn once with ``seed`` and committed, so
    every later run validates on the same images.
    """
    names = sorted(path.name for path in (DATA / dataset / "images").glob("*.tif"))
    path = SPLITS / listing
    if path.is_file():
        validation = path.read_text().split()
    else:
        order = np.random.default_rng(seed).permutation(len(names))
        validation = sorted(names[i] for i in order[:count])
        SPLITS.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(validation) + "\n")
    missing = set(validation) - set(names)
    if missing:
        raise SystemExit(f"validation images missing from {DATA / dataset}: {sorted(missing)[:3]}...")
    held = set(validation)
    _link_pairs([n for n in names if n not in held], DATA / dataset, work / "train")
    _link_pairs(validation, DATA / dataset, work / "validation")
    return work / "train", work / "validation"


def nuclei_split(work: Path) -> tuple[Path, Path]:
    """The DSB2018 fluorescence images: 80 held out, drawn with seed 2018."""
    return listed_split(work, "dsb2018", "dsb2018-validation.txt", NUCLEI_VALIDATION_COUNT, NUCLEI_SPLIT_SEED)


def cells_split(work: Path) -> tuple[Path, Path]:
    """The Usiigaci phase-contrast images: 6 of 30 held out, drawn with seed 2019."""
    return listed_split(work, "usiigaci", "usiigaci-validation.txt", 6, 2019)


def stained_split(work: Path) -> tuple[Path, Path]:
    """The DSB2018 H&E images: 12 of 57 held out, drawn with seed 2020, plus restained copies."""
    train, validation = listed_split(work, "dsb2018_color", "dsb2018-color-validation.txt", 12, 2020)
    add_restained(train, copies=4)
    return train, validation


def add_restained(train: Path, copies: int) -> None:
    """Put ``copies`` versions of each H&E training image beside it, as another lab would stain and scan it.

    Labs differ in the colour and strength of their haematoxylin and eosin and in their
    magnification (20x-40x). Each copy is the image's stain amounts (colour deconvolution)
    drawn again with stain colours moved by a few percent, amounts scaled by 0.7-1.4 and
    the whole rescaled by 0.7-1.6, its labels rescaled alike.
    """
    from scipy import ndimage

    from napari_unet.core.normalize import _STAINS

    for kind in ("images", "labels"):
        for old in (train / kind).glob("restained-*.tif"):
            old.unlink()
    rng = np.random.default_rng(20000)
    for path in sorted((train / "images").glob("*.tif")):
        rgb = tifffile.imread(path)[..., :3]
        labels = tifffile.imread(train / "labels" / path.name)
        density = -np.log10(np.clip(rgb / 255.0, 1 / 255, 1.0))
        amounts = density @ np.linalg.inv(_STAINS)
        for copy in range(copies):
            stains = _STAINS + rng.normal(0, 0.05, _STAINS.shape)
            stains = np.abs(stains) / np.linalg.norm(stains, axis=1, keepdims=True)
            scaled = amounts * rng.uniform(0.7, 1.4, 3) + rng.uniform(-0.03, 0.03, 3)
            image = np.clip(255 * 10 ** -(np.maximum(scaled, 0) @ stains), 0, 255)
            zoom = rng.uniform(0.7, 1.6)
            image = ndimage.zoom(image, (zoom, zoom, 1), order=1)
            zoomed = ndimage.zoom(labels, zoom, order=0)
            name = f"restained-{path.stem}-{copy}.tif"
            tifffile.imwrite(train / "images" / name, image.round().astype(np.uint8), photometric="rgb")
            tifffile.imwrite(train / "labels" / name, zoomed.astype(np.uint16), photometric="minisblack")


def stained_init(work: Path, init: str) -> str:
    """``init`` as a model that reads RGB images through their haematoxylin stain."""
    from napari_unet.core.normalize import Normalization
    from napari_unet.core.registry import load_model

    if init == "scratch":
        raise SystemExit("nuclei-he starts from a grayscale nuclei model (--init nuclei)")
    model = load_model(init)
    settings = model.normalization.to_dict() | {"colour": "haematoxylin"}
    model.normalization = Normalization.from_dict(settings)
    return str(model.save(work / "init-haematoxylin.safetensors"))


def add_synthetic(train: Path, count: int) -> None:
    """Put ``count`` generated images of touching nuclei beside the real training images.

    They teach the model to part touching nuclei by shape where the image shows no dark
    line between them. Seeds start at 10000, far from the napari sample's (2015), so the
    sample stays unseen; earlier generated images are replaced.
    """
    from napari_unet.core.synthetic import synthetic_nuclei

    for kind in ("images", "labels"):
        for old in (train / kind).glob("synthetic-*.tif"):
            old.unlink()
    rng = np.random.default_rng(10000)
    for index in range(count):
        side = int(rng.integers(256, 513))
        smallest = rng.uniform(4.0, 10.0)
        radius = (smallest, smallest + rng.uniform(2.0, 8.0))
        # As many nuclei as cover 10-30% of the image.
        count_here = int(rng.uniform(0.1, 0.3) * side * side / (np.pi * np.mean(radius) ** 2))
        image, labels = synthetic_nuclei((side, side), count_here, radius, touching=rng.uniform(0.3, 0.8),
                                         seed=10000 + index, dtype=np.uint8 if index % 2 else np.uint16)
        name = f"synthetic-{index:04d}.tif"
        tifffile.imwrite(train / "images" / name, image, photometric="minisblack")
        tifffile.imwrite(train / "labels" / name, labels.astype(np.uint16), photometric="minisblack")


def em_split(work: Path) -> tuple[Path, Path]:
    """Training and validation stacks cut from the ISBI 2012 volume (outside the repository)."""
    volume = tifffile.imread(DATA / "isbi2012" / "volume.tif")
    labels = tifffile.imread(DATA / "isbi2012" / "labels.tif")
    held = np.isin(np.arange(len(volume)), EM_VALIDATION_SLICES)
    for part, planes in (("train", ~held), ("validation", held)):
        for kind, stack in (("images", volume), ("labels", labels)):
            folder = work / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            # Instance labels: each connected cell interior is one object.
            data = stack[planes] if kind == "images" else _components(stack[planes])
            # A stack of gray planes: said explicitly, or 3 or 4 planes would read as RGB(A).
            tifffile.imwrite(folder / "isbi2012.tif", data, compression="zlib", photometric="minisblack",
                             metadata={"axes": "ZYX"})
    return work / "train", work / "validation"


def _components(interior: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.stack([ndimage.label(plane > 0)[0] for plane in interior]).astype(np.uint16)


def em_measures(predicted: Path, truth: Path) -> dict:
    """ISBI 2012 measures on the validation slices: pixel error and foreground-restricted V_rand."""
    from napari_unet.core.metrics import isbi_scores

    return isbi_scores(tifffile.imread(truth), tifffile.imread(predicted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--minutes", type=float, default=60.0, help="training time budget (default: 60)")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "napari-unet-training",
                        help="work folder outside the repository")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
    parser.add_argument("--init", default="scratch", help="continue from this model file instead of scratch")
    parser.add_argument("--learning-rate", help="instead of the recipe's (for a second, gentler round with --init)")
    parser.add_argument("--batch-size", help="instead of the recipe's (a GPU takes more patches per step)")
    parser.add_argument("--steps-per-epoch", help="instead of the recipe's (steps between validations)")
    parser.add_argument("--base-width", help="instead of the recipe's (from scratch only)")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="nuclei: add this many generated images of touching nuclei to the training set")
    parser.add_argument("--no-embed", action="store_true", help="train and report, but leave the package alone")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training: choose the threshold, evaluate (and embed) the model the work folder holds")
    parser.add_argument("--embed-only", action="store_true",
                        help="embed the model the work folder holds with the figures of its last evaluation "
                        "(summary.json), as a run with --no-embed left them")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"the real data folder {DATA} is missing")

    recipe = RECIPES[args.name]
    work = args.work / args.name
    splits = {"nuclei": nuclei_split, "nuclei-he": stained_split, "cells": cells_split, "em-neurites": em_split}
    train, validation = splits[args.name](work)
    if args.name == "nuclei-he" and not (args.evaluate_only or args.embed_only):
        args.init = stained_init(work, args.init)
    if args.name == "nuclei":
        add_synthetic(train, args.synthetic)
        if args.synthetic:
            recipe["training_data"] += f", plus {args.synthetic} generated images of touching nuclei"
    model = work / f"{args.name}.safetensors"
    if args.embed_only:
        summary = json.loads((work / "summary.json").read_text())
        figures = {key: value for key, value in summary.items() if key not in ("model", "train_minutes", "hardware")}
        embed(model, args.name, recipe, figures, validation)
        return
    arguments = list(recipe["train"])
    for option in ("learning_rate", "batch_size", "steps_per_epoch", "base_width"):
        if getattr(args, option):
            arguments[arguments.index("--" + option.replace("_", "-")) + 1] = getattr(args, option)
    if args.init != "scratch":
        arguments.append("--train-norm")  # continuing on the whole training set, not fine-tuning on a few
    start = time.monotonic()
    if not args.evaluate_only:
        napari_unet(
            "train", "--images", str(train / "images"), "--labels", str(train / "labels"),
            "--val-images", str(validation / "images"), "--val-labels", str(validation / "labels"),
            # --overwrite: the work folder is the script's own.
            "--out", str(model), "--overwrite", "--init", args.init,
            "--max-minutes", str(args.minutes), "--device", args.device,
            *arguments, threads=args.threads,
        )
    else:
        retune_threshold(model, validation, args.device)  # training does it at its end
    minutes = (time.monotonic() - start) / 60
    if args.name == "em-neurites":
        held_out = "held-out ISBI 2012 slices " + "-".join(str(i) for i in EM_VALIDATION_SLICES[::3])
    else:
        source = {"nuclei": "dsb2018", "nuclei-he": "dsb2018 H&E", "cells": "usiigaci"}[args.name]
        held_out = f"{len(list((validation / 'images').glob('*.tif')))} held-out {source} images"
    figures = {"data": held_out, **validation_figures(model, validation, args)}
    # The same with test-time augmentation (predict --tta), the figures' second row in docs/models.md.
    figures.update({f"tta_{key}": value for key, value in validation_figures(model, validation, args, "--tta").items()})
    hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, device {args.device}"
    summary = {"model": args.name, "train_minutes": round(minutes, 1), "hardware": hardware, **figures}
    print(json.dumps(summary, indent=2))
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_embed:
        embed(model, args.name, recipe, figures, validation)


def validation_figures(model: Path, validation: Path, args, *options: str) -> dict:
    """Predict the validation images with ``napari-unet predict`` (and ``options``) and measure them."""
    predicted = validation / ("predicted" + "".join(options).replace("--", "-"))
    napari_unet("predict", "--model", str(model), str(validation / "images"), "--out", str(predicted),
                "--overwrite", "--device", args.device, *options, threads=args.threads)
    report = predicted.with_suffix(".json")
    napari_unet("evaluate", "--pred", str(predicted), "--gt", str(validation / "labels"), "--json", str(report),
                "--overwrite")
    scores = json.loads(report.read_text())
    thresholds = scores["thresholds"]
    figures = {
        "ap50_pooled": round(scores["ap_pooled"][thresholds.index(0.5)], 4),
        "ap75_pooled": round(scores["ap_pooled"][thresholds.index(0.75)], 4),
        "mean_ap_0.5_0.95": round(scores["mean_ap_0.5_0.95"], 4),
        "pixel_iou": round(scores["pixel_iou"], 4),
    }
    if args.name == "em-neurites":
        figures.update({k: round(v, 4) for k, v in em_measures(predicted / "isbi2012.tif",
                                                                validation / "labels" / "isbi2012.tif").items()})
    return figures


def retune_threshold(path: Path, validation: Path, device: str) -> None:
    """Choose the post-processing threshold of a model trained before training chose it."""
    from napari_unet.core.modelfile import load_model_file
    from napari_unet.core.train import TrainingSample, tune_threshold

    model = load_model_file(path)
    samples = [TrainingSample(tifffile.imread(image), tifffile.imread(validation / "labels" / image.name))
               for image in sorted((validation / "images").glob("*.tif"))]
    before = model.threshold
    print(f"threshold {before} -> {tune_threshold(model, samples, device)} (best on the validation images)")
    model.save(path)


def embed(path: Path, name: str, recipe: dict, figures: dict, validation: Path) -> None:
    """Write the trained model into the package with its name, description and validation figures."""
    from napari_unet.core.familiarity import HESITATION, hesitation
    from napari_unet.core.modelfile import load_model_file
    from napari_unet.core.predict import predict

    model = load_model_file(path)
    model.name, model.description = name, recipe["description"]
    # How unsure it is of its own kind of image, as training records it: the
    # unfamiliar-image check compares other images with this.
    probabilities = (predict(model, tifffile.imread(image)).probability
                     for image in sorted((validation / "images").glob("*.tif")))
    planes = (plane for probability in probabilities for plane in probability.reshape(-1, *probability.shape[-2:]))
    figures = {**figures, HESITATION: round(hesitation(planes), 4)}
    model.training_data, model.evaluation = recipe["training_data"], figures
    written = model.save(EMBEDDED / f"{name}.safetensors")
    print(f"embedded {written} ({written.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
