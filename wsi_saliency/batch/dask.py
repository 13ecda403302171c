"""Scale-out: run a batch's slides as tasks on a Dask cluster.

``inference.scheduler`` (``--scheduler``) chooses where a batch runs
(:func:`wsi_saliency.batch.run_batch` picks the runner): ``None`` in the batch's own
process (:mod:`wsi_saliency.batch.local`), ``local:N`` on a
:class:`distributed.LocalCluster` of N worker processes on this machine, or a running
scheduler (``tcp://host:8786``). Everything but the loop is shared with the local runner
(:mod:`wsi_saliency.batch.state`): discovery and naming happen before, the resume check
and the summary on this side, and each slide is one task that runs
:func:`wsi_saliency.batch.slide.execute_slide` (temporary folder inside ``OUT``, the same
per-slide function :func:`wsi_saliency.worker.run_slide`, rename into place) on a
worker. So ``OUT`` and the slides must be on a filesystem every worker sees at the
same paths.

The model is loaded on each worker from its directory, once per worker process, and
kept by the :class:`ModelCache` worker plugin keyed by directory and weights SHA-256;
a worker whose copy of the model has other weights fails its slides with a message
saying so. One slide runs at a time per worker process (the plugin holds a lock: the
saliency hooks live on the shared model). With ``local:N`` on a machine with several
GPUs, worker ``k`` uses GPU ``k mod n_gpus`` when the device is ``auto`` or ``cuda``.

``distributed`` is an optional dependency (``pip install "wsi-saliency[distributed]"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from wsi_saliency.batch.outdir import clean_stale_temp
from wsi_saliency.batch.slide import (
    RunSlideFn,
    SlideJob,
    SlideOutcome,
    execute_slide,
    failed_outcome,
)
from wsi_saliency.batch.state import (
    finish_batch,
    interrupt_batch,
    record_outcome,
    skip_if_complete,
    start_batch,
)
from wsi_saliency.batch.summary import BatchReporter, BatchSummary, notify
from wsi_saliency.config import RunConfig, parse_scheduler
from wsi_saliency.errors import ClusterError, InvalidModelError, MissingDependencyError

if TYPE_CHECKING:
    from distributed import Client, WorkerPlugin

    from wsi_saliency.models import LoadedModel
else:
    try:
        from distributed import WorkerPlugin
    except ImportError:  # the optional extra is not installed; require_distributed() says so
        WorkerPlugin = object

__all__ = [
    "PLUGIN_NAME",
    "ModelCache",
    "ModelRef",
    "connect",
    "gpu_for_worker",
    "require_distributed",
    "run_batch_on_cluster",
]

logger = logging.getLogger(__name__)

#: Name under which :class:`ModelCache` is registered on the workers.
PLUGIN_NAME = "wsi-saliency-model-cache"
_INSTALL_HINT = 'pip install "wsi-saliency[distributed]"'


def require_distributed() -> ModuleType:
    """Import ``distributed`` or say how to install it.

    Returns
    -------
    module
        The ``distributed`` package.

    Raises
    ------
    MissingDependencyError
        It is not installed.
    """
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError(
            f"--scheduler needs the Dask 'distributed' package, which is not installed; "
            f"run: {_INSTALL_HINT}"
        ) from exc
    return distributed


@contextlib.contextmanager
def connect(address: str) -> Iterator[Client]:
    """Connect to a Dask scheduler, or start a local cluster, for the length of a batch.

    Parameters
    ----------
    address
        ``local:N``: a :class:`distributed.LocalCluster` of N worker processes with one
        thread each, closed on exit. Otherwise a scheduler address
        (``tcp://host:8786``); the connection times out after Dask's
        ``distributed.comm.timeouts.connect`` (30 s by default).

    Yields
    ------
    distributed.Client

    Raises
    ------
    ConfigError
        ``address`` is neither form.
    MissingDependencyError
        ``distributed`` is not installed.
    ClusterError
        The local cluster cannot start or the scheduler cannot be reached.
    """
    n_local = parse_scheduler(address)
    distributed = require_distributed()
    cluster: Any = None
    try:
        if n_local is not None:
            cluster = distributed.LocalCluster(
                n_workers=n_local,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            client = distributed.Client(cluster)
        else:
            client = distributed.Client(address)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        what = (
            f"cannot start a local Dask cluster of {n_local} workers"
            if n_local is not None
            else f"cannot reach the Dask scheduler at {address}"
        )
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ClusterError(
            f"{what} ({text}); start one with 'dask scheduler' and "
            f"'dask worker <address> --nthreads 1', or check the address"
        ) from exc
    logger.info("Dask cluster: scheduler %s", client.scheduler.address)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def gpu_for_worker(name: object, n_gpus: int) -> int | None:
    """GPU a worker of a local cluster uses on a machine with several GPUs.

    Parameters
    ----------
    name
        The worker's name (``LocalCluster`` names its workers 0, 1, ...).
    n_gpus
        Visible CUDA devices.

    Returns
    -------
    int or None
        ``name mod n_gpus`` for an integer name when there are at least two GPUs;
        None otherwise (the process's current device is used, e.g. the one
        ``CUDA_VISIBLE_DEVICES`` leaves).
    """
    if n_gpus < 2 or isinstance(name, bool):
        return None
    if isinstance(name, int):
        return name % n_gpus
    if isinstance(name, str) and name.isdigit():
        return int(name) % n_gpus
    return None


@dataclass(frozen=True)
class ModelRef:
    """Where a worker finds the batch's model.

    Parameters
    ----------
    path
        Absolute model directory; None is the bundled demo model.
    weights_sha256
        The weights hash the batch was started with.
    trust_code
        Whether the model folder may run its own Python code (``model.trust_code``).
    """

    path: str | None
    weights_sha256: str
    trust_code: bool = False

    @classmethod
    def of(cls, model: Any, config: RunConfig) -> ModelRef:
        """The reference of a model loaded on the batch's side.

        Parameters
        ----------
        model
            The loaded model (its ``spec.source`` is its resolved directory).
        config
            The run configuration (``model.path`` None means the demo model).

        Returns
        -------
        ModelRef
        """
        spec = model.spec
        path = None
        if config.model.path is not None:
            path = str(getattr(spec, "source", "") or os.path.abspath(config.model.path))
        return cls(
            path=path,
            weights_sha256=str(spec.weights_sha256),
            trust_code=bool(config.model.trust_code),
        )

    def load(self) -> LoadedModel:
        """Load the model and check its weights hash.

        Returns
        -------
        LoadedModel

        Raises
        ------
        InvalidModelError
            The model cannot be loaded, or its weights differ from the batch's.
        """
        from wsi_saliency.models import load_model

        model = load_model(self.path, trust_code=self.trust_code)
        got = model.spec.weights_sha256
        if got != self.weights_sha256:
            where = self.path or "the bundled demo model"
            raise InvalidModelError(
                f"model {where} on worker host {socket.gethostname()} has weights SHA-256 "
                f"{got[:12]}..., the batch was started with {self.weights_sha256[:12]}...; "
                "give every worker the same model folder (a shared filesystem)"
            )
        return model


class ModelCache(WorkerPlugin):
    """Worker plugin: the models loaded in one worker process, and its slide lock.

    Registered once per cluster (idempotent). Keeps the ``max_models`` most recently
    used models keyed by :class:`ModelRef` (directory and weights hash).

    Parameters
    ----------
    max_models
        Models kept per worker process.
    """

    idempotent = True
    name = PLUGIN_NAME

    def __init__(self, max_models: int = 2) -> None:
        self.max_models = max_models
        self.models: OrderedDict[ModelRef, LoadedModel] = OrderedDict()
        self.loads = 0
        self.gpu: int | None = None
        self._lock: threading.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle only the settings (the plugin is sent to every worker)."""
        return {"max_models": self.max_models}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a fresh, empty cache."""
        self.max_models = int(state["max_models"])
        self.models = OrderedDict()
        self.loads = 0
        self.gpu = None
        self._lock = None

    def setup(self, worker: Any) -> None:
        """Start empty on a worker; choose its GPU on a local multi-GPU cluster.

        Parameters
        ----------
        worker
            The :class:`distributed.Worker`.
        """
        self.models.clear()
        self.loads = 0
        self._lock = threading.Lock()
        self.gpu = gpu_for_worker(getattr(worker, "name", None), _cuda_device_count())

    @property
    def lock(self) -> threading.Lock:
        """Held while a slide runs in this worker process (one slide at a time)."""
        if self._lock is None:
            self._lock = threading.Lock()
        return self._lock

    def get(self, ref: ModelRef) -> LoadedModel:
        """The model for ``ref``, loaded on first use.

        Parameters
        ----------
        ref
            Model directory and expected weights hash.

        Returns
        -------
        LoadedModel

        Raises
        ------
        InvalidModelError
            As :meth:`ModelRef.load`.
        """
        model = self.models.get(ref)
        if model is None:
            model = ref.load()
            self.loads += 1
            self.models[ref] = model
            while len(self.models) > self.max_models:
                self.models.popitem(last=False)
        self.models.move_to_end(ref)
        return model


def _cuda_device_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPU choice
        return 0


def _device_context(gpu: int | None, device: str) -> contextlib.AbstractContextManager[Any]:
    if gpu is None or device not in ("auto", "cuda"):
        return contextlib.nullcontext()
    import torch

    return torch.cuda.device(gpu)


def _slide_task(
    job: SlideJob,
    ref: ModelRef,
    config: RunConfig,
    expected_hash: str,
    weights_sha256: str,
    run_slide: RunSlideFn | None,
) -> SlideOutcome:
    """One slide on a Dask worker: cached model, then :func:`execute_slide`."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, ModelCache):  # registered after this worker joined: no cache
        plugin = ModelCache(max_models=1)
        plugin.setup(worker)
    with plugin.lock:
        t0 = time.perf_counter()
        try:
            model = plugin.get(ref)
        except Exception as exc:  # noqa: BLE001 - a model that cannot load fails the slide
            return failed_outcome(exc, time.perf_counter() - t0)
        with _device_context(plugin.gpu, config.inference.device):
            return execute_slide(job, run_slide, model, config, expected_hash, weights_sha256)


def run_batch_on_cluster(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: RunConfig,
    model: LoadedModel,
    *,
    run_slide: RunSlideFn | None = None,
    overwrite: bool = False,
    names: Sequence[str] | None = None,
    reporter: BatchReporter | None = None,
    client: Client | None = None,
) -> BatchSummary:
    """Run a batch with each slide as one task on a Dask cluster.

    Outputs, resume, failure isolation, ``batch-summary.json`` and exit status are
    those of :func:`wsi_saliency.batch.local.run_local_batch`. Slides finish in any order; the
    summary is rewritten after each. The reporter gets ``slide_started`` and
    ``slide_finished`` when a slide's task ends (no per-tile progress from workers).

    Parameters
    ----------
    slides, out_dir, config, overwrite, names, reporter
        As for :func:`wsi_saliency.batch.local.run_local_batch`.
    model
        The model loaded on this side (for its weights hash); workers load their own
        copy from ``config.model.path`` (the demo model when None).
    run_slide
        Per-slide function run on the workers (must pickle); default
        :func:`wsi_saliency.worker.run_slide`.
    client
        An existing :class:`distributed.Client`; default: connect to
        ``config.inference.scheduler`` (:func:`connect`) for this batch.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ClusterError, MissingDependencyError
        Before any work: the cluster cannot be reached or started.
    KeyboardInterrupt
        After the tasks are cancelled and the summary is written (``interrupted``).
        A slide already running on a remote worker cannot be stopped; it finishes
        and commits its folder on its own. A local cluster's workers are stopped
        and their temporary folders removed.
    """
    if client is not None:
        return _run_with_client(
            client, slides, out_dir, config, model, run_slide, overwrite, names, reporter
        )
    address = config.inference.scheduler
    if address is None:
        raise ValueError("config.inference.scheduler is None and no client was given")
    local = parse_scheduler(address) is not None
    try:
        with connect(address) as own:
            return _run_with_client(
                own, slides, out_dir, config, model, run_slide, overwrite, names, reporter
            )
    finally:
        if local and os.path.isdir(out_dir):
            # the local workers have exited: remove what an interrupted task left behind
            clean_stale_temp(out_dir)


def _run_with_client(
    client: Client,
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: RunConfig,
    model: Any,
    run_slide: RunSlideFn | None,
    overwrite: bool,
    names: Sequence[str] | None,
    reporter: BatchReporter | None,
) -> BatchSummary:
    from distributed import as_completed

    state = start_batch(slides, out_dir, config, model, names=names, reporter=reporter)
    ref = ModelRef.of(model, config)
    client.register_plugin(ModelCache())
    token = uuid.uuid4().hex[:8]
    futures: dict[Any, int] = {}
    for i, job in enumerate(state.jobs):
        record = state.summary.records[i]
        if skip_if_complete(state, i, overwrite=overwrite):
            notify(reporter, "slide_started", i, record)
            notify(reporter, "slide_finished", i, record)
            continue
        future = client.submit(
            _slide_task,
            job,
            ref,
            state.config,
            state.expected_hash,
            state.weights_sha256,
            run_slide,
            key=f"wsi-slide-{i}-{token}",
            pure=False,
        )
        futures[future] = i
        logger.info(
            "%s: queued %s",
            state.tag(i),
            job.path,
            extra={**state.log_extra(i), "event": "slide_queued"},
        )
    state.summary.write()
    try:
        for future in as_completed(list(futures)):
            i = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost or killed worker fails the slide
                outcome = failed_outcome(exc, 0.0)
            future.release()
            notify(reporter, "slide_started", i, state.summary.records[i])
            record_outcome(state, i, outcome)
            state.summary.write()
    except KeyboardInterrupt:
        client.cancel(list(futures))
        for i in futures.values():
            record = state.summary.records[i]
            if record.status == "pending":
                record.status, record.error = "interrupted", "interrupted by the user"
        interrupt_batch(state)
        raise
    return finish_batch(state)
