"""Spread the layers of a checkpoint over a Dask distributed cluster.

The client sends each worker a checkpoint path and layer names. The worker
opens the checkpoint itself, so every worker must see the file at the same
path on shared storage. It computes the layers with the same
``analyze_layer`` as a local run and returns the small ``LayerResult``
records, so no tensor travels through the scheduler.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import SetolError

if TYPE_CHECKING:
    from .analysis import CheckpointAnalysis
    from .config import Config
    from .options import AnalysisOptions
    from .results import LayerResult

#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT = 30
#: Runs whose opened checkpoint a worker process keeps between tasks.
_WORKER_RUNS = 8
_worker_analyses: OrderedDict[str, CheckpointAnalysis] = OrderedDict()
_worker_lock = threading.Lock()

INSTALL_HINT = "pip install pytest-setol[dask]"


@contextmanager
def cluster_client(address: str | None) -> Iterator[Any]:
    """Connect to the Dask scheduler at ``address`` for the duration of the block.

    Yields None, and connects to nothing, when ``address`` is None.
    """
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError as exc:
        raise SetolError(
            f"--scheduler needs the Dask distributed package: {INSTALL_HINT}"
        ) from exc
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SetolError(
            f"cannot connect to the Dask scheduler at {address!r}: {exc}; "
            "check the address, or start one with `dask scheduler`"
        ) from exc
    try:
        yield client
    finally:
        client.close()


def analyze_on_cluster(
    analysis: CheckpointAnalysis, client: Any, base: str | None = None
) -> None:
    """Compute the layers of ``analysis`` on the cluster and record them.

    ``analysis`` must name a checkpoint file or folder by path, and ``base``
    is its base checkpoint when it was given one. A read error on a worker is
    raised here.
    """
    names = analysis.layer_names()
    if not names:
        return
    path = os.path.abspath(analysis.path)
    run = uuid.uuid4().hex
    # The configuration travels once per worker, not once per task.
    config = client.scatter(analysis.config, broadcast=True)
    futures = client.map(
        _analyze_on_worker,
        names,
        path=path,
        base=None if base is None else os.path.abspath(base),
        config=config,
        options=analysis.options,
        run=run,
        pure=False,
    )
    # In submission order, which is the report's order.
    for future in futures:
        analysis.record(future.result())


def _analyze_on_worker(
    name: str,
    *,
    path: str,
    base: str | None,
    config: Config,
    options: AnalysisOptions,
    run: str,
) -> LayerResult:
    """Analyse layer ``name`` of the checkpoint at ``path`` in a worker process.

    The opened checkpoint is kept for the other tasks of the same ``run``. A
    new run opens it again, so a file changed between runs is read afresh.
    """
    from .analysis import CheckpointAnalysis

    with _worker_lock:
        analysis = _worker_analyses.get(run)
        if analysis is None:
            analysis = CheckpointAnalysis(path, config, options, base=base)
            _worker_analyses[run] = analysis
            while len(_worker_analyses) > _WORKER_RUNS:
                _worker_analyses.popitem(last=False)
        analysis.layer_names()  # read the header once, not in each thread
    return analysis.layer(name)
