"""Peak memory and throughput of batch prediction on a long and a short TIFF stack.

The batch engine (:func:`napari_unet.core.batch.predict_files_iter`, what
``napari-unet predict`` runs) streams: it reads one page, predicts it, writes the label
page, and goes on, so its peak memory must not grow with the stack's length. This
script writes two synthetic uint16 stacks of generated nuclei (uncompressed, as
microscopes write them; about 2 GB and about 50 MB by default) and segments each with a
small random network (``NetworkConfig(depth=1, base_width=4)``, seed 0; speed does not
depend on the weights), each in a fresh process so that its peak resident memory
(``VmHWM`` of ``/proc/self/status``, Linux) is its own. Headline: ``peak_rss_ratio`` =
peak RSS of the long stack over peak RSS of the short one (1.0 means flat; the issue asks
for "a small constant"). Then the short stack again on a local Dask cluster of
``--workers`` single-threaded worker processes (``--dask-stack large`` for the long one):
planes/s, the peak RSS of the driving process and of each worker, and whether its labels
equal the single-process ones bit for bit. Last, the short stack's planes as a folder of
single-plane files (as many experiments store them), in one process and on Dask:
``folder_vs_stack`` = planes/s of the folder over planes/s of the same planes in one
stack (1.0 means files cost nothing more than planes; the engine predicts across file
boundaries, so that one file's labels are made while the next goes through the network).
Prints one JSON object.

    python bench/bench_batch.py --threads 1            # 2 GB and 50 MB stacks (about 10 minutes on 2 busy cores)
    python bench/bench_batch.py --large-mb 512         # a 512 MB long stack instead of 2 GB
    python bench/bench_batch.py --quick                # 8 MB and 2 MB, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLANE = 512  # plane edge in pixels: 0.5 MiB per uint16 plane
NETWORK = {"depth": 1, "base_width": 4}
#: Settings of the prediction (the engine's defaults otherwise).
OPTIONS = {"device": "cpu"}


def _memory_mb(status: str | None = None) -> dict:
    """Current (``VmRSS``) and peak (``VmHWM``) resident memory of a process, in MiB.

    Read from ``/proc/self/status`` (Linux): ``VmHWM`` is the peak of the process's own
    memory since it started. ``getrusage``'s ``ru_maxrss`` is not used: a spawned child
    inherits the parent's figure through fork and exec.
    """
    if status is None:
        status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {key: int(fields[field].split()[0]) / 1024 for key, field in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def write_stack(path: Path, megabytes: float, plane: int = PLANE) -> int:
    """Write an uncompressed uint16 stack of about ``megabytes`` MB page by page; returns its planes.

    Eight generated nuclei planes are cycled, each copy rolled differently, so that no
    two neighbouring planes are equal and the file is written without holding it.
    """
    import tifffile

    from napari_unet.core.synthetic import synthetic_nuclei

    planes = max(1, round(megabytes * 1e6 / (plane * plane * 2)))
    bases = [synthetic_nuclei((plane, plane), count=plane * plane // 2500, seed=seed)[0] for seed in range(8)]
    stack = tifffile.memmap(path, shape=(planes, plane, plane), dtype=np.uint16, photometric="minisblack",
                            bigtiff=planes * plane * plane * 2 > 2**31)
    for index in range(planes):
        stack[index] = np.roll(bases[index % 8], 37 * (index // 8), axis=1)
        if index % 64 == 63:
            stack.flush()
    stack.flush()
    del stack
    return planes


def write_folder(stack: Path, folder: Path) -> int:
    """Write each page of ``stack`` as a file of its own in ``folder``; returns the files written."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffFile(stack) as tif:
        for index, page in enumerate(tif.pages):
            tifffile.imwrite(folder / f"plane_{index:05d}.tif", page.asarray())
    return index + 1


def _segment(path: str, out: str, threads: int | None, workers: int | None, queue) -> None:
    """Child process: segment one stack (or a folder of files) and put its figures in ``queue``."""
    import torch

    from napari_unet.core.batch import predict_files
    from napari_unet.core.bundle import Model
    from napari_unet.core.model import NetworkConfig

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Model.new(NetworkConfig(**NETWORK))
    figures = {}
    if workers:
        from napari_unet.core.distributed import dask_executor

        with dask_executor(workers=workers) as executor:
            executor.model_on_workers(model)  # the one-off sending is not part of the timing
            baseline = _memory_mb()["rss"]
            start = time.perf_counter()
            result = predict_files(model, [path], out, executor=executor, **OPTIONS)
            seconds = time.perf_counter() - start
            # A bound method of a Path runs on each worker and reads that worker's own status.
            statuses = executor.client.run(Path("/proc/self/status").read_text)
        figures["worker_peak_rss_mb"] = [round(_memory_mb(text)["peak"], 1) for text in statuses.values()]
    else:
        baseline = _memory_mb()["rss"]
        start = time.perf_counter()
        result = predict_files(model, [path], out, **OPTIONS)
        seconds = time.perf_counter() - start
    if result.failed:
        raise RuntimeError(result.failed[0].error)
    planes = sum(item.planes for item in result.files)
    figures.update({
        "planes": planes,
        "seconds": round(seconds, 2),
        "planes_per_s": round(planes / seconds, 3),
        "megapixels_per_s": round(planes * PLANE * PLANE / seconds / 1e6, 3),
        "objects": sum(item.objects for item in result.files),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(_memory_mb()["peak"], 1),
    })
    if not workers:
        figures["threads"] = torch.get_num_threads()
    figures["rss_growth_mb"] = round(figures["peak_rss_mb"] - figures["baseline_rss_mb"], 1)
    queue.put(figures)


def segment_in_child(path: Path, out: Path, threads: int | None, workers: int | None = None) -> dict:
    """Run :func:`_segment` in a fresh (spawned) process, so that its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_segment, args=(str(path), str(out), threads, workers, queue))
    process.start()
    figures = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"the benchmark process failed with exit code {process.exitcode}")
    return figures


def _same_labels(first: Path, second: Path) -> bool:
    """Whether two label stacks are equal, compared page by page."""
    from napari_unet.core.tiffstream import TiffPageReader

    with TiffPageReader(first) as a, TiffPageReader(second) as b:
        if a.shape != b.shape:
            return False
        return all(np.array_equal(a.read_page(i), b.read_page(i)) for i in range(a.pages))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mb", type=float, default=2048, help="size of the long stack in MB (default 2048)")
    parser.add_argument("--small-mb", type=float, default=50, help="size of the short stack in MB (default 50)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2; 0 skips Dask)")
    parser.add_argument("--dask-stack", choices=("small", "large"), default="small",
                        help="the stack the Dask run segments (default small)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the single process")
    parser.add_argument("--dir", help="folder for the stacks and labels (default: a temporary folder, deleted)")
    parser.add_argument("--quick", action="store_true", help="8 MB and 2 MB stacks, for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.large_mb, args.small_mb = 8, 2
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_batch_"))
    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "batch"}
    try:
        stacks = {}
        for name, megabytes in (("large", args.large_mb), ("small", args.small_mb)):
            path = folder / f"{name}.tif"
            start = time.perf_counter()
            planes = write_stack(path, megabytes)
            stacks[name] = path
            result[name] = {"stack_mb": round(path.stat().st_size / 1e6, 1), "write_seconds":
                            round(time.perf_counter() - start, 1)}
            result[name].update(segment_in_child(path, folder / "out", args.threads))
            assert result[name]["planes"] == planes
        result["peak_rss_ratio"] = round(result["large"]["peak_rss_mb"] / result["small"]["peak_rss_mb"], 3)
        result["peak_rss_difference_mb"] = round(result["large"]["peak_rss_mb"] - result["small"]["peak_rss_mb"], 1)
        if args.workers:
            target = stacks[args.dask_stack]
            dask = segment_in_child(target, folder / "dask", None, args.workers)
            dask["stack"] = args.dask_stack
            dask["workers"] = args.workers
            dask["speedup_over_single_process"] = round(
                dask["planes_per_s"] / result[args.dask_stack]["planes_per_s"], 3)
            dask["identical_to_single_process"] = _same_labels(folder / "out" / target.name,
                                                               folder / "dask" / target.name)
            result["dask"] = dask
        planes = write_folder(stacks["small"], folder / "planes")
        result["folder"] = {"files": planes, **segment_in_child(folder / "planes", folder / "folder", args.threads)}
        result["folder_vs_stack"] = round(result["folder"]["planes_per_s"] / result["small"]["planes_per_s"], 3)
        if args.workers:
            dask = segment_in_child(folder / "planes", folder / "dask_folder", None, args.workers)
            dask["workers"] = args.workers
            dask["speedup_over_single_process"] = round(dask["planes_per_s"] / result["folder"]["planes_per_s"], 3)
            dask["identical_to_single_process"] = all(
                _same_labels(folder / "folder" / name, folder / "dask_folder" / name)
                for name in sorted(path.name for path in (folder / "planes").iterdir()))
            result["dask_folder"] = dask
        import torch

        result.update({"plane": [PLANE, PLANE], "network": NETWORK, "torch": torch.__version__,
                       "python": platform.python_version(), "cpus": multiprocessing.cpu_count(), "quick": args.quick})
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
