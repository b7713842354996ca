"""Running one cell of a sweep somewhere: `run_cell` (the job function: one attempt, with crash
injection) and the executors that call it, `SequentialExecutor` (in this process) and
`SubmititExecutor` (submitit's local executor or SLURM job arrays).

submitit pickles `run_cell` by reference, so it must stay at module level here, importable in the job.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mech.io.provenance import describe_error, read_status


@dataclass(frozen=True)
class CellTask:
    """One attempt of one cell: everything the job needs, picklable by value."""

    index: int
    attempt: int
    experiment: str
    """Module path, resolved."""
    overrides: dict[str, Any]
    """Config overrides, `out` included."""
    crash_after: float | None = None
    """Fault injection: crash this attempt after this many seconds."""
    threads: int | None = None
    """Torch / OpenMP threads for the job (None: leave as is)."""
    sys_path: tuple[str, ...] = ()
    """The submitting process's `sys.path`: modules it imports by name (a test's fixture
    experiment) must import in the job too."""


@dataclass(frozen=True)
class Outcome:
    status: Literal["done", "failed"]
    run: str | None = None
    error: str | None = None
    seconds: float | None = None
    """From the job function's start (experiment import included) to its return."""
    started: str | None = None
    """When the job function started (the attempt's `queued` time is when it was logged)."""


def run_cell(task: CellTask, *, crash: Literal["kill", "raise"] = "kill") -> Outcome:
    """Run one attempt of a cell: the experiment's `main` on the cell's config. The experiment's
    errors come back as a failed `Outcome`; only a dead process reaches the executor as an error.

    `task.crash_after` injects a fault: `kill` sends SIGKILL to this process after that many
    seconds (a crash mid-work, like an out-of-memory kill); `raise` (in-process runs, where a
    kill would end the sweep) raises before `main` is called.
    """
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S")
    for entry in task.sys_path:
        if entry not in sys.path:
            sys.path.append(entry)
    if task.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(task.threads)
        if "torch" in sys.modules:  # already imported: the environment alone comes too late
            sys.modules["torch"].set_num_threads(task.threads)
    timer = None
    try:
        module = importlib.import_module(task.experiment)
        cfg = dataclasses.replace(module.Config(), **task.overrides)
        if task.crash_after is not None:
            if crash == "raise":
                raise RuntimeError(
                    f"deliberate crash of cell {task.index} (attempt {task.attempt}, --crash-cell)"
                )
            timer = threading.Timer(task.crash_after, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()
        run = Path(module.main(cfg))
    except Exception as err:
        return Outcome(
            "failed", error=describe_error(err), seconds=time.perf_counter() - started, started=started_at
        )
    finally:
        if timer is not None:
            timer.cancel()
    status = (read_status(run) or {}).get("status")
    if status != "done":
        return Outcome(
            "failed", str(run), f"main returned but {run}/run.json says {status!r}", started=started_at
        )
    return Outcome("done", str(run), seconds=time.perf_counter() - started, started=started_at)


# ---------------------------------------------------------------------------------------------
# Executors


class Executor(Protocol):
    name: str

    def run(self, tasks: Sequence[CellTask], sweep_dir: Path) -> list[Outcome]:
        """One outcome per task, in order; never raises for a task's failure."""
        ...


@dataclass
class SequentialExecutor:
    """In this process, one cell after another (`--crash-cell` raises instead of killing)."""

    name: str = "sequential"

    def run(self, tasks: Sequence[CellTask], sweep_dir: Path) -> list[Outcome]:  # noqa: ARG002 (protocol)
        return [run_cell(task, crash="raise") for task in tasks]


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables while jobs are submitted: submitit's local controller and
    `sbatch` both copy the submitting process's environment."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _brief(err: BaseException) -> str:
    """The first and last lines of a submitit error (its middle is a log dump)."""
    lines = [line for line in str(err).splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    if len(lines) <= 2:
        return f"{type(err).__name__}: {' / '.join(lines)}"
    return f"{type(err).__name__}: {lines[0]} ... {lines[-1]}"


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use: `CUDA_VISIBLE_DEVICES` when set (its entries, ids or
    UUIDs), else one per device torch sees; () without CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(entry.strip() for entry in listed.split(",") if entry.strip() and entry.strip() != "-1")
    import torch

    return tuple(str(n) for n in range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


class GpuPool:
    """Which GPU each running cell holds: a cell takes the first free one and gives it back."""

    def __init__(self, gpus: Sequence[str]) -> None:
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"gpus must be distinct, got {list(gpus)}")
        self.free, self.held = list(gpus), {}
        self.size = len(gpus)

    def acquire(self, cell: int) -> str | None:
        """A free GPU for `cell` (None when the pool is empty: no GPUs, no pinning)."""
        if not self.size:
            return None
        if not self.free:
            raise RuntimeError(
                f"no free GPU for cell {cell}: all {self.size} are held by {sorted(self.held)}"
            )
        self.held[cell] = self.free.pop(0)
        return self.held[cell]

    def release(self, cell: int) -> None:
        if cell in self.held:
            self.free.append(self.held.pop(cell))


@dataclass
class SubmititExecutor:
    """Through submitit: `cluster="local"` runs jobs as local processes, at most `max_parallel`
    at a time; `"slurm"` (or None: whatever submitit detects) submits one job array per round.
    The slurm fields pass through to submitit; jobs and logs go to `<sweep>/submitit/`."""

    cluster: str | None = "local"
    max_parallel: int = 2
    """Local: jobs running at once. Each gets max(1, cores // max_parallel) torch threads."""
    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    """Slurm: also the torch threads per job."""
    timeout_min: int = 60
    mem_gb: float | None = None
    array_parallelism: int | None = None
    """Slurm: array tasks running at once (submitit's default: 256)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other `update_parameters` arguments, e.g. {"slurm_qos": "high"}."""
    gpus: tuple[str, ...] | None = None
    """Local: the GPUs to pin cells to, one per running job (`CUDA_VISIBLE_DEVICES` set to it
    while the job is submitted); at most one job per GPU runs at once. None: those of
    `visible_gpus()`; () runs without pinning (CPU)."""
    poll_s: float = 0.5
    name: str = "submitit"

    @property
    def local(self) -> bool:
        return self.cluster == "local"

    def executor(self, sweep_dir: Path):
        import submitit

        executor = submitit.AutoExecutor(folder=Path(sweep_dir) / "submitit", cluster=self.cluster)
        params: dict[str, Any] = {"name": f"sweep-{Path(sweep_dir).name}", "timeout_min": self.timeout_min,
                                  "gpus_per_node": self.gpus_per_node, "cpus_per_task": self.cpus_per_task,
                                  "mem_gb": self.mem_gb}  # fmt: skip
        if not self.local:
            params["slurm_partition"] = self.partition
            params["slurm_array_parallelism"] = self.array_parallelism
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None}, **self.extra)
        return executor

    def threads(self) -> int | None:
        return max(1, _cores() // self.max_parallel) if self.local else self.cpus_per_task

    def run(self, tasks: Sequence[CellTask], sweep_dir: Path) -> list[Outcome]:
        executor = self.executor(sweep_dir)
        threads = self.threads()
        tasks = [dataclasses.replace(t, threads=threads) for t in tasks]
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
        if not self.local:
            with _environ(env), executor.batch():  # one job array per round
                jobs = [executor.submit(run_cell, task) for task in tasks]
            return [self._outcome(job) for job in jobs]
        # The local executor would start every job at once: keep max_parallel running, each on
        # a GPU of its own when there are GPUs.
        outcomes: list[Outcome | None] = [None] * len(tasks)
        queue, running = list(enumerate(tasks)), {}
        pool = GpuPool(visible_gpus() if self.gpus is None else self.gpus)
        parallel = min(self.max_parallel, pool.size) if pool.size else self.max_parallel
        try:
            while queue or running:
                while queue and len(running) < parallel:
                    i, task = queue.pop(0)
                    gpu = pool.acquire(i)
                    with _environ({**env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}):
                        running[i] = executor.submit(run_cell, task)
                for i, job in list(running.items()):
                    if job.done():
                        outcomes[i] = self._outcome(job)
                        pool.release(i)
                        del running[i]
                if running:
                    time.sleep(self.poll_s)
        except BaseException:  # Ctrl-C: local jobs would otherwise outlive the sweep
            for job in running.values():
                job.cancel(check=False)
            raise
        return [o for o in outcomes if o is not None]

    def _outcome(self, job) -> Outcome:
        if self.local and job.done() and not job.paths.result_pickle.exists():
            # The job function returns an Outcome for every error it can see, so no result means
            # its process died; submitit would wait 15 s for a result before saying so.
            return Outcome("failed", error=f"job {job.job_id} died without a result (killed by a signal, "
                                           f"e.g. SIGKILL or out of memory); log: {job.paths.stderr}")  # fmt: skip
        try:
            return job.result()
        except Exception as err:  # submitit's UncompletedJobError / FailedJobError: died, timed out
            return Outcome("failed", error=_brief(err))
