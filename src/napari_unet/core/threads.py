"""CPU threads for long work on a CPU that other programs share.

torch starts one thread per core, and its threads spin while they wait for each other.
When another program keeps a core busy, the operating system takes turns between it and
one of them, and the others spin until that one runs again: beside one busy process on 2
cores, training made 0.37 to 0.44 of its idle steps, where one thread makes 0.56 to 0.58
(``bench/bench_shared_cpu.py``). Idle, all threads are best by far (one makes 0.54 of
their steps). So :class:`ThreadTuner` keeps all threads while other programs leave the
CPU alone, and when they take a share of it, times steps of equal work under all threads
and under fewer, keeps the faster, and times them again now and then, as the load
changes. :class:`CpuUse` says how much of the CPU other programs take, which decides
that and tells a user why training made fewer steps than it could.
"""

from __future__ import annotations

import statistics
import time

import psutil
import torch

__all__ = ["BUSY_CPU_SHARE", "CpuUse", "ThreadTuner", "busy_cpu_message"]

#: Share of the CPU that other programs take before the user is told: a quarter is half
#: a core of a 2-core laptop, which costs training about half of its steps.
BUSY_CPU_SHARE = 0.25


class ThreadTuner:
    """Keeps torch's intra-op thread count at whichever of a few counts makes steps fastest now.

    Report the duration of every step of equal work with :meth:`step_took`, and
    :meth:`restore` torch's count at the end (or use it as a context, which does). While
    other programs take under half a core, all threads run: that is what an idle CPU
    does best, and timing other counts there would only cost steps. When they take more,
    the counts all threads, half of them and one are each timed over a few steps (after
    one step to settle) and the fastest is kept; they are timed again after
    ``remeasure_seconds`` (at doubling intervals while the same count keeps winning), and
    at once when the kept count slows down by a third.

    Args:
        threads: The most threads to use (default: torch's count).
        steps_timed: Steps timed for each count, after the one that settles it.
        remeasure_seconds: Time until the counts that lost are timed again.
        cpu_use: What measures the share of the CPU other programs take (default: a
            :class:`CpuUse` of this machine).
    """

    def __init__(self, threads: int | None = None, steps_timed: int = 3, remeasure_seconds: float = 20.0,
                 cpu_use: CpuUse | None = None):
        self._given = torch.get_num_threads()
        self.most = threads or self._given
        self.counts = sorted({self.most, max(1, self.most // 2), 1}, reverse=True)
        self.steps_timed = steps_timed
        self.remeasure_seconds = remeasure_seconds
        self.cpu_use = cpu_use or CpuUse()
        #: Share of the CPU other programs took, as last measured (None before a second).
        self.busy_cpu: float | None = None
        self._interval = remeasure_seconds
        self._times: dict[int, float] = {}  # median step seconds by count, as last timed
        self._current = self.most
        self._window: list[float] = []
        self._settling = False
        self._to_measure: list[int] = []  # counts still to time in this round
        self._measuring = False
        self._won_last: int | None = None
        self._kept_since = 0.0
        torch.set_num_threads(self.most)

    @property
    def threads(self) -> int:
        """The thread count torch uses now."""
        return self._current

    def restore(self) -> None:
        """Give torch back the thread count it had (of the calling thread, as torch keeps it)."""
        torch.set_num_threads(self._given)

    def __enter__(self) -> ThreadTuner:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def step_took(self, seconds: float) -> None:
        """Record the duration of one step under the current count, and change the count as the timings say."""
        share = self.cpu_use.others_share()  # None until a second has passed
        if share is not None:
            self.busy_cpu = share
        if len(self.counts) == 1:
            return
        if self._settling:  # the first step under a new count warms its threads up
            self._settling = False
            return
        self._window.append(seconds)
        if len(self._window) < self.steps_timed:
            return
        median = statistics.median(self._window)
        self._window = []
        now = time.monotonic()
        if self._measuring:
            self._times[self._current] = median
            if self._to_measure:
                self._switch(self._to_measure.pop(0))
            else:
                self._keep_fastest(now)
            return
        if not self._busy():
            self._times.clear()  # timings under another load say nothing of this one
            if self._current != self.most:
                self._switch(self.most)
            return
        # Beside other programs: time the counts when that starts, when the kept count
        # slows down by a third (the load changed), and now and then.
        previous = self._times.get(self._current)
        slower = previous is not None and median > previous * 4 / 3
        if slower:
            self._interval = self.remeasure_seconds
        if previous is None or slower or now - self._kept_since >= self._interval:
            self._times = {self._current: median}
            self._to_measure = [count for count in self.counts if count != self._current]
            self._measuring = True
            self._switch(self._to_measure.pop(0))

    def _busy(self) -> bool:
        """Whether other programs took half a core or more, as last measured."""
        return self.busy_cpu is not None and self.busy_cpu * (psutil.cpu_count() or 1) >= 0.5

    def _keep_fastest(self, now: float) -> None:
        fastest = min(self._times, key=self._times.__getitem__)
        # The same winner again: timing the others less often costs fewer steps.
        won_again = fastest == self._won_last
        self._interval = min(8 * self.remeasure_seconds, 2 * self._interval) if won_again else self.remeasure_seconds
        self._won_last, self._kept_since, self._measuring = fastest, now, False
        if fastest != self._current:
            self._switch(fastest)

    def _switch(self, count: int) -> None:
        torch.set_num_threads(count)
        self._current, self._window, self._settling = count, [], True


class CpuUse:
    """The share of the CPU that other programs took since the last reading.

    All of the machine's CPU time that is not idle, less this process's own, over the
    wall time times the cores.
    """

    def __init__(self):
        self._process = psutil.Process()
        self._last = self._reading()

    def _reading(self) -> tuple[float, float, float]:
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        own = self._process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def others_share(self) -> float | None:
        """Share (0 to 1) of all cores that other programs used since the last call (None after under a second)."""
        now, busy, own = self._reading()
        then, busy_before, own_before = self._last
        if now - then < 1.0:
            return None
        self._last = (now, busy, own)
        cores = psutil.cpu_count() or 1
        return min(max((busy - busy_before - (own - own_before)) / ((now - then) * cores), 0.0), 1.0)


def busy_cpu_message(share: float) -> str:
    """What to tell a user whose training shared the CPU with other programs taking ``share`` of it."""
    return (f"other programs used {share:.0%} of the CPU while training ran, so it made fewer steps in its time "
            "than it could; close them, or give training more minutes")
