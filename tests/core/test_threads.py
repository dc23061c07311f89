"""Tests of the thread count chosen from step timings, and of the CPU share other programs take."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from napari_unet.core import threads as threads_module
from napari_unet.core.threads import CpuUse, ThreadTuner, busy_cpu_message


class Clock:
    """A monotonic clock that steps advance, instead of the wall clock."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(threads_module.time, "monotonic", fake)
    return fake


class Load:
    """The share of the CPU other programs take, as a test sets it (a stand-in for :class:`CpuUse`)."""

    def __init__(self, share: float = 0.0):
        self.share = share

    def others_share(self) -> float:
        return self.share


def tuner(load: Load, **settings) -> ThreadTuner:
    return ThreadTuner(threads=4, cpu_use=load, **settings)


def run_steps(tuner: ThreadTuner, clock: Clock, seconds_per_step, steps: int) -> list[int]:
    """Run ``steps`` steps whose duration ``seconds_per_step(threads)`` gives; the counts they ran under."""
    counts = []
    for _ in range(steps):
        assert torch.get_num_threads() == tuner.threads  # torch runs what the tuner says
        counts.append(tuner.threads)
        seconds = seconds_per_step(tuner.threads)
        clock.now += seconds
        tuner.step_took(seconds)
    return counts


def idle(threads: int) -> float:
    return 1.0 / threads  # every thread helps


def beside_a_busy_process(threads: int) -> float:
    return {4: 2.0, 2: 0.8, 1: 1.0}[threads]  # one core taken: the spinning threads wait


def test_an_idle_machine_keeps_all_threads_and_times_no_other_count(clock):
    before = torch.get_num_threads()
    with tuner(Load(0.05)) as tuning:
        assert tuning.counts == [4, 2, 1]
        counts = run_steps(tuning, clock, idle, 500)
    assert torch.get_num_threads() == before  # restored
    assert counts == [4] * 500
    assert tuning.busy_cpu == 0.05


def test_beside_busy_programs_the_count_that_steps_fastest_is_kept(clock):
    with tuner(Load(0.3)) as tuning:
        counts = run_steps(tuning, clock, beside_a_busy_process, 600)
    assert counts[-1] == 2
    # Timing the others again costs a few steps, at growing intervals.
    assert counts[100:].count(2) / len(counts[100:]) > 0.9


def test_all_threads_stay_when_they_are_fastest_beside_busy_programs(clock):
    with tuner(Load(0.3)) as tuning:
        counts = run_steps(tuning, clock, idle, 600)
    assert counts[-1] == 4 and set(counts) == {4, 2, 1}  # timed, and lost


def test_the_count_follows_the_load_as_it_comes_and_goes(clock):
    load = Load(0.0)
    with tuner(load, remeasure_seconds=20) as tuning:
        run_steps(tuning, clock, idle, 100)
        assert tuning.threads == 4
        load.share = 0.3
        counts = run_steps(tuning, clock, beside_a_busy_process, 30)
        assert counts[10:].count(2) >= 15  # after a round of timing (and within 20 s of it)
        # The kept count three times slower: the load changed, and the counts are timed again.
        counts = run_steps(tuning, clock, lambda threads: {4: 3.0, 2: 2.4, 1: 1.0}[threads], 30)
        assert counts[15:].count(1) >= 12
        # When the other programs stop, all threads come back at once.
        load.share = 0.0
        counts = run_steps(tuning, clock, idle, 10)
        assert counts[-1] == 4


def test_one_thread_is_left_alone(clock):
    with ThreadTuner(threads=1, cpu_use=Load(0.5)) as tuning:
        assert run_steps(tuning, clock, idle, 50) == [1] * 50


def share_beside(start_work, stop_work) -> float:
    """:meth:`CpuUse.others_share` over 1.5 s of the work ``start_work`` starts."""
    use = CpuUse()
    assert use.others_share() is None  # no second has passed: nothing to say yet
    start_work()
    try:
        time.sleep(1.5)
        share = use.others_share()
    finally:
        stop_work()
    assert share is not None and 0.0 <= share <= 1.0
    return share


def test_other_programs_busy_on_the_cpu_are_measured_and_this_ones_threads_are_not():
    stop = threading.Event()
    workers = [threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)]) for _ in range(os.cpu_count())]
    programs = []

    def start_threads():
        for worker in workers:
            worker.start()

    def stop_threads():
        stop.set()
        for worker in workers:
            worker.join()

    def start_programs():
        programs.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count()))

    def stop_programs():
        for program in programs:
            program.kill()
            program.wait()

    before = share_beside(lambda: None, lambda: None)  # what else the machine runs
    own = share_beside(start_threads, stop_threads)
    others = share_beside(start_programs, stop_programs)
    # This process's busy threads are its own use, not other programs'.
    assert own <= before + 0.2
    # A program per core takes the CPU (less what this test and the rest of the machine
    # need), whatever share others took before.
    assert others >= min(before + 0.3, 0.9)


def test_the_message_says_how_much_of_the_cpu_others_took():
    assert busy_cpu_message(0.48).startswith("other programs used 48% of the CPU")


def test_prediction_on_the_cpu_times_each_plane_and_gives_the_thread_count_back(monkeypatch):
    from napari_unet.core.bundle import Model
    from napari_unet.core.model import NetworkConfig
    from napari_unet.core.predict import predict_iter

    timed = []
    monkeypatch.setattr(ThreadTuner, "step_took", lambda self, seconds: timed.append((self.threads, seconds)))
    model = Model.new(NetworkConfig(depth=2, base_width=4))
    stack = np.random.default_rng(0).random((5, 48, 64)).astype(np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before - 1))  # not torch's default: the count given back is this one
    expected = torch.get_num_threads()
    try:
        generator = predict_iter(model, stack, device="cpu")
        for _ in generator:
            pass
        assert len(timed) == 5 and all(seconds > 0 for _, seconds in timed)  # seconds per pixel of each plane
        assert torch.get_num_threads() == expected
        # Stopped halfway (the Predict widget's Stop), the count comes back too.
        generator = predict_iter(model, stack, device="cpu")
        next(generator)
        generator.close()
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
