"""The benchmark scripts still run: each one's quick mode ends with its JSON figures.

The figures themselves are not checked here (speed is measured, not tested); these
tests catch a script that no longer runs against the code it measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# The fine-tuning and time-to-accuracy scripts train for minutes even when quick.
QUICK_SCRIPTS = ["bench_augment", "bench_batch", "bench_cpu_fusion", "bench_interactive", "bench_postprocess",
                 "bench_predict", "bench_train_step", "bench_weights", "bench_monai", "bench_precision", "bench_volume",
                 "bench_volume_memory"]
#: Scripts that measure on the real data folder.
ON_REAL_DATA = {"bench_monai", "bench_precision", "bench_volume"}


@pytest.mark.slow
@pytest.mark.parametrize("script", QUICK_SCRIPTS)
def test_quick_benchmark_prints_its_figures(script, request):
    if script == "bench_monai":
        pytest.importorskip("monai", reason="MONAI is a benchmark-only dependency")
    if script in ON_REAL_DATA:
        request.getfixturevalue("shared_data")  # skips without it
    run = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--quick"], cwd=BENCH.parent,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["quick"] is True and figures["benchmark"]
    # What a script checks of its own results holds (the same labels or values as its reference).
    for check in ("matches", "tensor_labels_equal"):
        assert figures.get(check, True) is True, check
