"""Predicting the planes of a batch on a Dask cluster (``dask.distributed``, optional).

The model is sent to every worker once, with ``Client.scatter(..., broadcast=True)``;
each task then carries one plane and refers to the model already on its worker. Workers
run :func:`~napari_unet.core.batch.predict_plane`, the computation of the single-process
path, so the labels are the same. Files are still read and written by the process that
drives the batch, in order, with a bounded number of planes in flight, so memory stays
flat there too; the window runs across files, so that a folder of single-plane images
keeps every worker busy.

Dask is imported only when an executor is made: the core works without it.
"""

from __future__ import annotations

import logging
import signal
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .batch import PLANE_WARNINGS, PlaneResult, Unit, predict_plane
from .bundle import Model
from .errors import ClusterError, InputError, NapariUnetError
from .predict import GPU_TILE_SIZE
from .prediction_settings import PredictionSettings

__all__ = ["DaskExecutor", "dask_executor"]

logger = logging.getLogger(__name__)

#: Seconds to wait for a scheduler before telling the user it cannot be reached.
CONNECT_TIMEOUT = 20


def _distributed():
    try:
        import distributed
    except ImportError as error:
        raise InputError(
            "running on Dask (--workers, --scheduler) needs dask.distributed: pip install 'napari-unet-loop[dask]'"
        ) from error
    return distributed


class DaskExecutor:
    """Predicts units on the workers of a Dask client, in order, with a bounded window in flight.

    Args:
        client: A ``distributed.Client``.
        in_flight: Units submitted ahead of the one being written (default: two per
            worker thread, so that no worker waits while results are written).
    """

    def __init__(self, client, in_flight: int | None = None):
        self.client = client
        self.in_flight = in_flight
        self._scattered: dict[int, tuple[Model, object]] = {}

    def model_on_workers(self, model: Model):
        """The future of ``model`` on every worker, sent the first time it is asked for."""
        if id(model) not in self._scattered:
            future = self.client.scatter(model, broadcast=True, hash=False)
            # Keep the model itself too: its id could be reused once it is gone.
            self._scattered[id(model)] = (model, future)
        return self._scattered[id(model)][1]

    def _window(self) -> int:
        if self.in_flight is not None:
            return max(1, self.in_flight)
        return max(2, 2 * sum(self.client.nthreads().values()))

    def predict_units(self, model: Model, units: Iterable[Unit], settings: PredictionSettings,
                      probability: bool) -> Iterator[tuple[int, int, int] | PlaneResult]:
        model_future = self.model_on_workers(model)
        if settings.tile_size is None:
            # Workers share their machine's memory, which the CPU default tile size
            # (memory permitting, whole planes) assumes is one process's to use.
            settings = settings.replace(tile_size=GPU_TILE_SIZE)
        window = self._window()
        pending: deque = deque()
        finished = 0
        units = iter(units)
        try:
            while True:
                while len(pending) < window:
                    unit = next(units, None)
                    if unit is None:
                        break
                    # The unit goes in parts: Dask would take a tuple apart on its way.
                    pending.append(self.client.submit(_predict_plane_with_warnings, model_future, unit.pixels,
                                                      unit.channel_axis, unit.scale, settings, probability,
                                                      pure=False))
                if not pending:
                    return
                (labels, probability_plane), said = _result(pending.popleft())
                yield PlaneResult(finished, labels, probability_plane, tuple(said))
                finished += 1
        finally:
            if pending:  # stopped or failed: the cluster need not finish planes nobody writes
                self.client.cancel(list(pending))


def _result(future):
    """A plane's result from the cluster.

    Raises:
        NapariUnetError: If workers died each time they took the plane (it needs more
            memory than a worker has, most often): its file fails, the batch goes on.
        ClusterError: If the cluster lost the plane otherwise (its workers were stopped):
            what is left of the batch cannot be trusted to finish.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as error:
        raise NapariUnetError("the Dask workers died each time they predicted a plane of this file (out of "
                              "memory, most often); give the workers more memory, or choose a smaller tile size") from error
    except CancelledError as error:
        raise ClusterError("the Dask cluster lost a plane: its workers stopped or were killed; run the same "
                           "command again to go on with the files not finished") from error


def _predict_plane_with_warnings(model: Model, pixels, channel_axis: int | None, scale: dict,
                                 settings: PredictionSettings, probability: bool
                                 ) -> tuple[tuple, list[tuple[str, type[Warning]]]]:
    """:func:`~napari_unet.core.batch.predict_plane` of a unit on a worker, and the warnings it gave.

    A worker's warnings would reach only its own stderr, worded as Python prints them
    (or, on a remote cluster, nobody): they go back with the result, for the process that
    drives the batch to give them with the input's name, as it gives its own; with the
    error when the plane fails (its attribute
    :data:`~napari_unet.core.batch.PLANE_WARNINGS`). Recording warnings changes them for
    the whole process, so a worker that runs several tasks at once (a cluster started
    otherwise) keeps its warnings to itself rather than hand one task's to another.
    """
    import distributed

    args = (model, Unit(pixels, channel_axis, scale), settings, probability)
    worker = distributed.get_worker()
    if getattr(getattr(worker, "state", worker), "nthreads", 1) > 1:  # older versions lack Worker.state
        return predict_plane(*args), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = predict_plane(*args)
        except Exception as error:
            # Dask pickles the error with its attributes for the driving process.
            setattr(error, PLANE_WARNINGS, _portable(caught))
            raise
    return result, _portable(caught)


def _portable(caught: list[warnings.WarningMessage]) -> list[tuple[str, type[Warning]]]:
    """``(message, category)`` of recorded warnings, as the driving process can unpickle them.

    Categories go back as classes, which that process must be able to import: its own
    and Python's, others as plain user warnings.
    """
    return [(str(warning.message), warning.category
             if warning.category.__module__.split(".")[0] in ("builtins", "napari_unet") else UserWarning)
            for warning in caught]


def dask_setup(worker) -> None:
    """Run by every worker process of a local cluster as it starts (a Dask preload): ignore Ctrl-C.

    A terminal's Ctrl-C reaches every process of its foreground job, the local cluster's
    workers included, which would die at once with a screen of tracebacks of their own.
    The command line stops a batch itself on Ctrl-C (at its next plane, outputs safe),
    and then closes the cluster. Run again in a worker that Dask restarts.

    Args:
        worker: The worker starting (Dask's preload hook passes it; not needed here).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def dask_executor(scheduler: str | None = None, workers: int | None = None) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on an existing cluster or on a local one started for the block.

    Args:
        scheduler: Address of a running scheduler (``tcp://host:8786``).
        workers: Start a local cluster of this many single-threaded worker processes.

    Raises:
        InputError: If dask.distributed is not installed, both or neither of the
            arguments are given, or the scheduler cannot be reached.
    """
    if (scheduler is None) == (workers is None):
        raise InputError("give either a scheduler address or a number of workers")
    distributed = _distributed()
    cluster = None
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({error})") from error
    else:
        if workers < 1:
            raise InputError(f"the number of workers must be positive, not {workers}")
        # One thread per worker: torch in each process uses the cores it is given.
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR,
                                           preload=[__name__])  # dask_setup
        client = None
        try:
            client = distributed.Client(cluster)
            # Workers register a moment after the cluster starts; the model is sent to
            # those that are there, so wait for all of them.
            client.wait_for_workers(workers, timeout=60)
        except BaseException:  # a cluster that did not come up is not left running
            if client is not None:
                client.close()
            cluster.close()
            raise
    logger.info("Dask: %d worker(s) at %s", len(client.nthreads()), client.scheduler.address)
    try:
        yield DaskExecutor(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
