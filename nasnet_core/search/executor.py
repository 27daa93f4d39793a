"""Workqueue backends: run children in-process (default) or as Ray tasks (local or a cluster)."""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..common.errors import ProjectError
from .rewards import run_child

__all__ = ["Executor", "InProcessExecutor", "RayExecutor", "EXECUTORS", "make_executor", "ClusterUnreachable",
           "check_reachable", "CONNECT_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 20.0
"""How long a Ray cluster address may take to accept a TCP connection (Ray's own connect to a dead
address retries for over 10 minutes)."""


class ClusterUnreachable(ProjectError, ConnectionError):
    """No Ray cluster answers at the configured address (checked before a run writes anything)."""


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ClusterUnreachable (one line) unless ``host:port`` (or ``ray://host:port``) accepts a TCP
    connection within ``timeout`` seconds; other forms (None, ``auto``) are left to Ray."""
    host, sep, port = (address or "").split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        why = f"no answer in {timeout:g} s" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise ClusterUnreachable(f"no Ray cluster answers at {address} ({why}); start one there (ray start "
                                 f"--head --port {port}), or give a new run another --address") from None


class Executor:
    """Interface: ``submit`` a child, ``wait`` for at least one result, ``shutdown``.

    A backend runs ``job(reward_cfg, space_cfg, child_id, decisions, timeout)`` per child:
    ``run_child`` for a search, ``retrain.retrain_job`` to retrain the top K."""

    slots = 1  # children that can run at the same time

    def submit(self, child_id: int, decisions: list[int]) -> None:
        """Queue one child for evaluation."""
        raise NotImplementedError

    def wait(self) -> list[tuple[int, dict]]:
        """Block until at least one queued child has a result; return ``(child_id, result)`` pairs."""
        raise NotImplementedError

    def pending(self) -> int:
        """Children queued or running."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Release resources."""


class InProcessExecutor(Executor):
    """Runs each child in this process, one at a time, in submission order."""

    def __init__(self, reward_cfg: dict, space_cfg: dict, child_timeout: float | None = None,
                 job: Callable = run_child, **_):
        self.reward_cfg, self.space_cfg, self.timeout, self.job = reward_cfg, space_cfg, child_timeout, job
        self.queue: deque = deque()

    def submit(self, child_id: int, decisions: list[int]) -> None:
        """Queue one child."""
        self.queue.append((child_id, decisions))

    def wait(self) -> list[tuple[int, dict]]:
        """Run the oldest queued child now."""
        child_id, decisions = self.queue.popleft()
        return [(child_id, self.job(self.reward_cfg, self.space_cfg, child_id, decisions, self.timeout))]

    def pending(self) -> int:
        """Queued children."""
        return len(self.queue)


class RayExecutor(Executor):
    """Children as Ray tasks: one GPU each where the cluster has GPUs, retried when a worker dies."""

    def __init__(self, reward_cfg: dict, space_cfg: dict, address: str | None = None,
                 num_cpus: int | None = None, cpus_per_child: int = 1, gpus_per_child: float | None = None,
                 max_retries: int = 3, child_timeout: float | None = None, job: Callable = run_child, **_):
        try:
            import ray
        except ImportError:
            raise ImportError("the ray backend needs Ray: pip install 'nasnet[search]' "
                              "(or pip install 'ray>=2.9')") from None
        self.ray = ray
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            if address:
                check_reachable(address)  # before ray.init, which retries a dead address for minutes
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, RuntimeError) as e:  # reachable, but not as a Ray cluster
                    raise ClusterUnreachable(f"cannot connect to the Ray cluster at {address}: "
                                             f"{type(e).__name__}: {e}") from None
            else:
                # Local workers import this checkout of nasnet_core, whatever is installed.
                root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                ray.init(num_cpus=num_cpus, runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
        resources = ray.cluster_resources()
        if gpus_per_child is None:
            gpus_per_child = 1 if resources.get("GPU", 0) > 0 else 0
        self.reward_cfg, self.space_cfg, self.timeout = reward_cfg, space_cfg, child_timeout
        self.task = ray.remote(job).options(num_cpus=cpus_per_child, num_gpus=gpus_per_child,
                                            max_retries=max_retries, retry_exceptions=False)
        by_cpu = int(resources.get("CPU", 1) // max(cpus_per_child, 1e-9))
        by_gpu = int(resources.get("GPU", 0) // gpus_per_child) if gpus_per_child else by_cpu
        self.slots = max(1, min(by_cpu, by_gpu))
        self.refs: dict = {}

    def submit(self, child_id: int, decisions: list[int]) -> None:
        """Start one child as a Ray task."""
        # the worker enforces the timeout (SIGALRM in the task's thread): queue time does not count
        ref = self.task.remote(self.reward_cfg, self.space_cfg, child_id, list(decisions), self.timeout)
        self.refs[ref] = child_id

    def wait(self) -> list[tuple[int, dict]]:
        """Results of the tasks that finished (at least one); a task lost for good is a failed child."""
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        out = []
        for ref in ready:
            child_id = self.refs.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:  # worker died more than max_retries times, ...
                result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            out.append((child_id, result))
        return out

    def pending(self) -> int:
        """Tasks submitted and not yet collected."""
        return len(self.refs)

    def shutdown(self) -> None:
        """Cancel outstanding tasks; stop Ray if this executor started it."""
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owns_ray:
            self.ray.shutdown()


EXECUTORS: dict[str, Callable[..., Executor]] = {"inprocess": InProcessExecutor, "ray": RayExecutor}


def make_executor(executor_cfg: dict, reward_cfg: dict, space_cfg: dict) -> Executor:
    """The backend named by ``executor_cfg['backend']``."""
    cfg = dict(executor_cfg)
    name = cfg.pop("backend")
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor backend {name!r}; known: {', '.join(EXECUTORS)}")
    return EXECUTORS[name](reward_cfg, space_cfg, **cfg)
