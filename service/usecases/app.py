"""The service's use cases wired together, with no gRPC in sight: the composition root.

:class:`Gradwire` is what the servicer calls: its parts are the use cases, :attr:`Gradwire.models`
(:mod:`.models`), :attr:`Gradwire.inference` (:mod:`.inference`), :attr:`Gradwire.datasets`
(:mod:`.datasets`) and :attr:`Gradwire.runs` (:mod:`.runs`), and runs execute through an
:class:`~..execution.executor.Executor` fed by this process's
:class:`~..execution.executor.Supervisor`.

Memory holds caches only: built networks, by ``(model, version)`` (:mod:`.inference`).
"""

from __future__ import annotations

from collections.abc import Callable

from gradwire.storage import Store

from ..core.settings import MiB, Settings
from ..execution.executor import Executor, Supervisor, ThreadExecutor, owner_id
from ..execution.process_executor import ProcessExecutor
from ..execution.ray_executor import RayExecutor
from ..execution.signals import Changes
from .cache import NetworkCache
from .datasets import Datasets
from .inference import Inference
from .models import Models
from .runs import Runs

EXECUTORS: dict[str, Callable[[Store, Settings, Changes, Callable[[], None]], Executor]] = {
    "process": ProcessExecutor,
    "thread": ThreadExecutor,
    "ray": RayExecutor,
}
"""Each ``executor`` setting's executor (the names: :data:`.settings.EXECUTORS`)."""


class Gradwire:
    """The application: every RPC's behaviour, callable without a server."""

    def __init__(self, store: Store, settings: Settings, executor: Executor | None = None) -> None:
        self.store, self.settings, self.limits = store, settings, settings.limits
        self.owner = owner_id()
        self.changes = Changes()
        networks = NetworkCache(settings.model_cache_mb * MiB)
        self.executor = executor or EXECUTORS[settings.executor](
            store, settings, self.changes, self._job_done
        )
        self.supervisor = Supervisor(store, self.executor, settings, self.owner)
        self.models = Models(store, settings.limits, networks.forget)
        self.inference = Inference(store, settings, networks)
        self.datasets = Datasets(store, settings.limits)
        self.runs = Runs(
            store, settings, self.datasets, self.changes, self.supervisor.queued, self.executor.cancel
        )

    def _job_done(self) -> None:
        self.supervisor.nudge()

    def start(self) -> None:
        """Start the executor's workers, then claiming and executing runs."""
        self.executor.start()
        self.supervisor.start()

    def close(self, grace: float = 5.0) -> None:
        """Claim nothing more and end every watch; ask the runs executing here to stop at their next
        epoch end (they become interrupted, their checkpoints kept), waiting up to ``grace`` seconds."""
        self.runs.close()
        self.supervisor.stop()
        self.executor.shutdown(grace)
