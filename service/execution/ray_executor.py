"""Runs on a Ray cluster: the API processes only queue, watch and serve.

With ``executor`` ``ray``, a server connects to the cluster at ``ray_address`` and makes sure it
holds ``ray_actors`` training actors (by default as many as the cluster's CPUs hold at
``ray_cpus_per_run`` each). They are named and detached, in the namespace ``gradwire``: every
replica finds the same ones, and they outlive the replica that made them. Each actor is a worker
of its own, with ``ray_cpus_per_run`` CPUs and as many BLAS threads: a thread in it claims the
oldest queued run from the database, executes it (:class:`.jobs.RunJob`: the run, its datasets
and its checkpoint read from the database, its epochs and its end written back), and claims the
next. A server that queues a run wakes them, else they look every ``poll_seconds``.

An actor keeps the settings it was made with, so its name carries their digest
(``gradwire-trainer-<digest>-<n>``): a server started with other settings makes actors of its
own and retires every other one. A retiring actor claims nothing more, stops its run at the end
of the epoch (interrupted by ``shutdown``, its checkpoint kept: a supervisor queues it again at
once, for an actor of the new settings to resume), and exits.

So the database stays the only truth, and nothing changes for runs: cancel, resume and leases
are the same as on local workers. An actor on a node that dies takes its run's lease with it;
when the lease runs out a server interrupts the run and queues it again, and another actor
resumes it from its checkpoint, bit for bit. Ray restarts the lost actor where it finds room.

The server's own executor claims nothing (:meth:`RayExecutor.free_slots` is 0); its supervisor
still reaps expired leases and queues interrupted runs again. Ray is an optional extra (``pip
install 'gradwire[ray]'``): nothing imports it unless ``executor`` says ``ray``. Ray moves the
actors' arguments with its own serialisation; gradwire hands them JSON text only.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from gradwire.storage import Store, open_store

from ..core.errors import StartupError
from ..core.settings import Settings
from ..core.tuning import BlasThreads
from .executor import owner_id
from .jobs import RunJob
from .signals import StopFlags
from .worker import BLAS_VARIABLES, Setup

log = logging.getLogger(__name__)

NAMESPACE = "gradwire"
ACTOR_PREFIX = "gradwire-trainer-"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise StartupError("executor 'ray' needs Ray: pip install 'gradwire[ray]'") from None
    return ray


class Quiet:
    """A job's run events on a Ray actor: nobody in its process watches (watchers on the
    servers read the database every ``poll_seconds``)."""

    def bump(self, run_id: str) -> None:
        pass

    def finished(self, run_id: str) -> None:
        pass


class Trainer:
    """A training actor's body (see the module's docstring): made remote by :func:`actor_class`."""

    def __init__(self, settings_json: str) -> None:
        setup = Setup.from_json(settings_json)
        BlasThreads.use(setup.blas_threads)
        self.settings = setup.settings
        self.store = open_store(self.settings.database_url, self.settings.db_statement_seconds, create=False)
        self.owner = owner_id()
        self.wakeup = threading.Event()
        self.closing = threading.Event()
        self.retiring = threading.Event()
        self.flags = StopFlags()  # the run's it executes
        self.claims = threading.Thread(target=self._loop, name="gradwire-ray-claims", daemon=True)
        self.claims.start()

    def wake(self) -> None:
        """A run was queued: look now."""
        self.wakeup.set()

    def retire(self) -> None:
        """Claim nothing more, stop the run at its epoch's end (it is queued again), and exit;
        a run still going a lease later is left to its lease."""
        self.retiring.set()
        self.flags.shutdown.set()
        self.wakeup.set()
        self.claims.join(self.settings.lease_seconds)
        import_ray().actor.exit_actor()

    def _loop(self) -> None:
        while not self.retiring.is_set():
            try:
                run = self.store.runs.claim_next(self.owner)
            except Exception as exc:  # the database away, or worse: the actor claims again later
                log.warning("could not claim runs; trying again", extra={"error": str(exc)})
                run = None
            if run is None:
                self.wakeup.wait(self.settings.poll_seconds)
                self.wakeup.clear()
                continue
            log.info("run claimed", extra={"run": run.id, "attempt": run.attempts})
            self.flags = StopFlags()
            if self.retiring.is_set():  # it was told between the claim and now
                self.flags.shutdown.set()
            job = RunJob(self.store, run.id, run.owner, self.settings, Quiet(), self.flags, self.closing)
            job.execute_logged()


def actor_class(ray: Any) -> Any:
    return ray.remote(Trainer)


def retire_others(ray: Any, ours: str) -> list[str]:
    """Retire the training actors whose names do not start with ``ours`` (made with other
    settings); the names of those told to."""
    actors = ray.util.list_named_actors(all_namespaces=True)
    named = [a["name"] for a in actors if a["namespace"] == NAMESPACE]
    others = sorted(n for n in named if n.startswith(ACTOR_PREFIX) and not n.startswith(ours))
    for name in others:
        try:
            ray.get_actor(name, namespace=NAMESPACE).retire.remote()
        except ValueError:  # it went meanwhile
            continue
    return others


class RayExecutor:
    """The server's side of runs on Ray: it claims nothing, keeps the actors, wakes them."""

    def __init__(
        self, store: Store, settings: Settings, changes: Any, on_done: Callable[[], None] = lambda: None
    ) -> None:
        self.settings = settings
        self.actors: list[Any] = []

    def start(self) -> None:
        """Join the cluster and make sure the actors are there (StartupError if no cluster)."""
        ray, settings = import_ray(), self.settings
        if not ray.is_initialized():
            address = settings.ray_address or "auto"
            try:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise StartupError(f"no Ray cluster at {address}: {exc}") from None
        cpus = settings.ray_cpus_per_run
        count = settings.ray_actors or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
        threads = max(1, int(cpus))
        level = logging.getLogger().getEffectiveLevel()
        setup = Setup(settings=settings, blas_threads=threads, nice=0, log_json=False, log_level=level)
        options = {
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "get_if_exists": True,
            "num_cpus": cpus,
            "max_restarts": -1,
            "max_concurrency": 2,  # wake() beside the claims thread's run
            "runtime_env": {"env_vars": dict.fromkeys(BLAS_VARIABLES, str(threads))},
        }
        remote, settings_json = actor_class(ray), setup.to_json()
        ours = f"{ACTOR_PREFIX}{hashlib.sha256(settings_json.encode()).hexdigest()[:12]}-"
        made = (remote.options(name=f"{ours}{i}", **options) for i in range(count))
        self.actors = [actor.remote(settings_json) for actor in made]
        retired = retire_others(ray, ours)
        what = {"actors": count, "cpus_per_run": cpus, "address": settings.ray_address, "retired": retired}
        log.info("training on Ray", extra=what)

    def free_slots(self) -> int:
        return 0  # the actors claim runs themselves

    def submit(self, run_id: str, lease: str) -> None:
        raise AssertionError("runs on Ray are claimed by the actors, never submitted")

    def executing(self) -> set[str]:
        return set()  # nothing executes in this process: every lease is the database's to judge

    def cancel(self, run_id: str) -> None:
        pass  # the actor hears of it at its run's next heartbeat

    def wake(self) -> None:
        for actor in self.actors:
            actor.wake.remote()

    def shutdown(self, grace: float) -> None:
        pass  # the actors belong to the cluster: their runs go on without this server
