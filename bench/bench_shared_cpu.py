"""Training throughput on a CPU that something else keeps busy, against the same CPU idle.

A napari user's CPU is never idle: the viewer renders, a browser runs, another analysis
runs beside it. Losing one of two cores to another process should at most halve the
steps training makes in a time budget. This script fine-tunes the embedded ``nuclei`` on
10 held-out DSB2018 images for a fixed time (the Train widget's defaults, no validation)
in a fresh process per run, idle and beside one busy-looping process, under the thread
count training chooses from its step times (``adaptive``, the default), under torch's own
count kept throughout (``all_threads``), under OpenMP threads that sleep at once when they
wait (``passive_wait``) and under one thread. The peer is the idle ``all_threads`` run on
the same machine: each ``ratio`` is steps over its steps. Needs ``../shared/data``.
Prints one JSON object.

    python bench/bench_shared_cpu.py                  # 30 s per run, 8 runs
    python bench/bench_shared_cpu.py --seconds 60
    python bench/bench_shared_cpu.py --quick          # 8 s per run
    python bench/bench_shared_cpu.py --work predict   # planes of a stack predicted, not training steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

#: Thread settings compared (environment of the run): the count training chooses, torch's
#: own count kept, threads that sleep at once when they wait, and a single thread.
SETTINGS = {
    "adaptive": {},
    "all_threads": {"BENCH_FIXED_THREADS": "1"},
    "passive_wait": {"OMP_WAIT_POLICY": "PASSIVE", "BENCH_FIXED_THREADS": "1"},
    "one_thread": {"OMP_NUM_THREADS": "1"},
}

#: Run in a fresh process: OpenMP reads its settings once, when torch loads it.
TRAIN = """
import json, os, sys, warnings
import tifffile
warnings.simplefilter("ignore")
if os.environ.get("BENCH_FIXED_THREADS"):  # training as it was before it chose its thread count
    from napari_unet.core.threads import ThreadTuner
    ThreadTuner.step_took = lambda self, seconds: None
from napari_unet.core.progress import run_to_end
from napari_unet.core.train import TrainingConfig, TrainingSample, train_iter
data, split, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = open(split).read().split()[:10]
samples = [TrainingSample(tifffile.imread(f"{data}/images/{n}"), tifffile.imread(f"{data}/labels/{n}")) for n in names]
config = TrainingConfig(max_minutes=seconds / 60, epochs=10**6, device="cpu", seed=0, val_fraction=0)
result = run_to_end(train_iter(samples, model="nuclei", config=config))
print(json.dumps({"steps": result.model.training["steps"]}))
"""

#: The same for prediction: planes of 512x512 (four DSB2018 images side by side, over
#: and over) that ``nuclei`` segments in the time, as a stack goes through a batch.
PREDICT = """
import json, os, sys, time, warnings
import numpy as np, tifffile
warnings.simplefilter("ignore")
if os.environ.get("BENCH_FIXED_THREADS"):
    from napari_unet.core.threads import ThreadTuner
    ThreadTuner.step_took = lambda self, seconds: None
from napari_unet.core.predict import predict_planes_iter
from napari_unet.core.registry import load_model
data, split, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = open(split).read().split()[:4]
tiles = [tifffile.imread(f"{data}/images/{n}")[:256, :256].astype(np.float32) for n in names]
plane = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])[None]
model, planes, start = load_model("nuclei"), 0, time.monotonic()
for _, done, total, finished in predict_planes_iter(model, ((plane, 1.0) for _ in range(10**6)), device="cpu"):
    planes += finished is not None
    if time.monotonic() - start >= seconds:
        break
print(json.dumps({"steps": planes}))
"""


def steps(code: str, seconds: float, environment: dict) -> int:
    """Training steps (or planes predicted) that one fresh process running ``code`` makes in ``seconds``."""
    run = subprocess.run([sys.executable, "-c", code, str(DATA / "dsb2018"),
                          str(ROOT / "scripts" / "splits" / "dsb2018-validation.txt"), str(seconds)],
                         env={**os.environ, **environment}, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per run (default: 30)")
    parser.add_argument("--quick", action="store_true", help="8 s per run")
    parser.add_argument("--work", choices=("train", "predict"), default="train",
                        help="fine-tune (steps), or predict a stack plane by plane (planes) (default: train)")
    args = parser.parse_args()
    if not DATA.is_dir():
        parser.error(f"the real data folder {DATA} is missing")
    seconds = 8.0 if args.quick else args.seconds
    results = {}
    for load in ("idle", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            for name, environment in SETTINGS.items():
                results[f"{load}_{name}"] = steps(TRAIN if args.work == "train" else PREDICT, seconds, environment)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    peer = results["idle_all_threads"]
    print(json.dumps({
        "benchmark": f"{'training steps' if args.work == 'train' else 'planes predicted'} beside one busy process", "seconds_per_run": seconds, "steps": results,
        "ratio_to_idle_all_threads": {key: round(value / peer, 3) for key, value in results.items()},
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
