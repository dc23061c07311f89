"""Memory and speed of labelling a large z-stack in 3D: peak memory under a limit, and throughput against its planes.

A generated uint16 z-stack of nuclei (100 x 2048 x 2048 by default, 800 MB; nuclei of
the ``nuclei`` model's size, z step 2 pixels, shot noise) is written as an ImageJ TIFF
and segmented twice by the command line, each run in a process of its own:

* ``volume``: ``napari-unet predict --model nuclei --3d --voxel-size 2 1 1 --max-memory
  GB``: labelled in 3D, planned for the memory limit (chunks of planes, labelled in
  blocks where whole planes do not fit);
* ``planes``: the same without ``--3d``: each plane labelled on its own, as before 3D
  labelling.

Both are given the nuclei's diameter (``--diameter 17``), so that both predict at the
same scale and the volume's run measures no diameter.

``peak_rss_gb`` is each process's peak resident memory (Linux's ``VmHWM``), the
image, the model and torch included, and ``plan`` how the volume was labelled (whole,
in chunks, in blocks); ``volume_throughput_vs_planes`` is the planes' seconds over the
volume's (the issue's target: at least 0.6), and ``under_limit`` whether the
volume's peak stayed under ``--max-memory``. ``ap50`` and ``ap75`` score the 3D labels
against the generated objects in 3D, on a central 100 x 512 x 512 crop (an object cut
by the crop is cut alike in both), as a check that the labels are right. Prints one
JSON object.

    python bench/bench_volume_memory.py                      # about 17 minutes on a 2-core CPU
    python bench/bench_volume_memory.py --quick              # 24 x 512 x 512, limit 0.7 GB: in blocks
    python bench/bench_volume_memory.py --max-memory 3 --threads 2
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import environment, report, torch_device, torch_parser
from scipy import ndimage

from napari_unet.core.metrics import average_precision

#: Runs the command line in this process and reports its peak memory on the last line of stderr: the
#: kernel's high-water mark of its resident memory (``VmHWM``; ``ru_maxrss`` would carry the parent's
#: over the fork).
MEASURED = """
import json, sys
from napari_unet.cli import main
code = main(sys.argv[1:])
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"code": code, "peak_kb": int(status["VmHWM"].split()[0])}), file=sys.stderr)
"""

Z_STEP = 2.0  # pixels
RADIUS = 8.5  # XY pixels: the nuclei model's diameter of 16.7
SPACING = 28  # XY pixels between neighbours' centres (z: 12 planes)


def generated_stack(depth: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 ``(depth, size, size)`` z-stack of nuclei on a jittered grid, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((depth, size, size), np.uint32)
    z_radius = RADIUS / Z_STEP
    box = np.ogrid[-int(z_radius) - 1:int(z_radius) + 2, -int(RADIUS) - 1:int(RADIUS) + 2,
                   -int(RADIUS) - 1:int(RADIUS) + 2]
    number = 0
    for cz in np.arange(6, depth - 3, 12):
        for cy in np.arange(SPACING // 2, size - RADIUS, SPACING):
            for cx in np.arange(SPACING // 2, size - RADIUS, SPACING):
                z, y, x = (int(round(c + j)) for c, j in zip((cz, cy, cx), rng.uniform(-3, 3, 3)))
                inside = (box[0] / z_radius) ** 2 + (box[1] / RADIUS) ** 2 + (box[2] / RADIUS) ** 2 <= 1
                number += 1
                region = labels[z + box[0].min():z + box[0].max() + 1, y + box[1].min():y + box[1].max() + 1,
                                x + box[2].min():x + box[2].max() + 1]
                fits = inside[:region.shape[0], :region.shape[1], :region.shape[2]]
                region[fits & (region == 0)] = number
    image = np.where(labels > 0, 180.0, 20.0).astype(np.float32)
    image = ndimage.gaussian_filter(image, (0.5, 1.0, 1.0))
    image = rng.poisson(image).astype(np.uint16)
    return image, labels


def command_line(arguments: list[str], threads: int | None) -> dict:
    """Run ``napari-unet ARGUMENTS`` in a process of its own: its seconds and peak memory."""
    environment_variables = None
    if threads:
        environment_variables = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED, *arguments], capture_output=True, text=True,
                          env=environment_variables)
    seconds = time.perf_counter() - started
    lines = done.stderr.strip().splitlines()
    measured = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"code": done.returncode}
    if measured.get("code") != 0:
        raise SystemExit(f"napari-unet {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    # With -v, the core says how it labels the volume (whole, in chunks, in blocks).
    plan = next((line.split(": ", 1)[1] for line in lines if line.startswith("INFO: labelling the volumes")),
                "labelling the volumes whole" if "--3d" in arguments else None)
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(measured["peak_kb"] / 2**20, 3),
            **({"plan": plan} if plan else {})}


def main() -> None:
    parser = torch_parser(__doc__, "a 24 x 512 x 512 stack under 0.7 GB")
    parser.add_argument("--max-memory", type=float, default=None, help="the limit in GB (default 3; --quick 0.7)")
    parser.add_argument("--depth", type=int, default=None, help="planes (default 100; --quick 24)")
    parser.add_argument("--size", type=int, default=None, help="plane edge in pixels (default 2048; --quick 512)")
    args = parser.parse_args()
    device = torch_device(parser, args)
    depth = args.depth or (24 if args.quick else 100)
    size = args.size or (512 if args.quick else 2048)
    limit = args.max_memory or (0.7 if args.quick else 3.0)
    image, truth = generated_stack(depth, size)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source = folder / "stack.tif"
        tifffile.imwrite(source, image, imagej=True, metadata={"axes": "ZYX", "spacing": Z_STEP})
        # The nuclei's diameter given, as both runs then predict at the same scale (unmeasured, --3d measures it).
        common = ["-v", "predict", "--model", "nuclei", str(source), "--device", str(device), "--overwrite",
                  "--diameter", str(2 * RADIUS)]
        volume = command_line([*common, "--out", str(folder / "volume"), "--3d", "--voxel-size", str(Z_STEP), "1",
                               "1", "--max-memory", str(limit)], args.threads)
        planes = command_line([*common, "--out", str(folder / "planes")], args.threads)
        labels = tifffile.imread(folder / "volume" / "stack.tif")
    middle = slice(max(size // 2 - 256, 0), size // 2 + 256)
    scored = average_precision([truth[:, middle, middle]], [labels[:, middle, middle]], thresholds=(0.5, 0.75),
                               volumes=True)
    report({
        "benchmark": "3D labelling of a large z-stack under a memory limit, against its planes alone",
        "stack": [depth, size, size],
        "stack_gb": round(image.nbytes / 2**30, 3),
        "objects": int(truth.max()),
        "max_memory_gb": limit,
        "volume": volume,
        "planes": planes,
        "under_limit": volume["peak_rss_gb"] <= limit,
        "volume_throughput_vs_planes": round(planes["seconds"] / volume["seconds"], 3),
        "ap50": round(scored["ap_pooled"][0], 4),
        "ap75": round(scored["ap_pooled"][1], 4),
        **environment(device, args.quick),
    })


if __name__ == "__main__":
    main()
