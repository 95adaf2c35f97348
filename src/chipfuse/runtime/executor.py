"""`Executor`: the dies' worker processes — start, rendezvous, setup, watch, stop. No scheduling here.

    ex = Executor(plan, model_path, threads)
    ex.start(spawn=True, master=None, timeout_s=300)   # launch (or wait for hand-started workers), rendezvous
    info = ex.setup()                                  # each die loads its stage; resident bytes checked
    ex.to_first.send(...); ex.from_last.recv()          # the pipeline's two host ends (transport.Channel)
    ex.shutdown()                                      # SHUTDOWN down the pipeline, reap, no orphans

A watchdog notices a dead worker, records a `WorkerDeath` (which die, signal or exit code, its
log's last line) and kills the others, so every blocked transfer fails at once instead of hanging.
The host joins torch.distributed's default process group, so one Executor per process at a time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ChipfuseError
from ..plan.plan import Plan

if TYPE_CHECKING:
    from .resident import ResidentProcess
    from .transport import Channel, Fanout


class DeviceError(ChipfuseError):
    """A die failed or the device was used wrongly; the message says which and what happened."""


ONE_PER_PROCESS = ("another Device is open in this process; close it first (dev.close() or leave its `with` "
                   "block), or run the second one in another process. Why: the host side of a Device joins "
                   "torch.distributed's default process group, of which a process has exactly one")


def worker_env() -> dict[str, str]:
    """Environment for worker processes. The dies of a pipeline take turns on the same cores: an
    OpenMP thread spins briefly between kernels of its own stage, then sleeps, so an idle die does
    not starve the active one. Measured on 2 cores (benchmarks/bench_runtime.py): fully passive
    waits lose ~10% at 1 die; 30000 spins (~0.6 ms of pause loops after each stage) slowed every
    stage of a 4-die pipeline by ~1.5x; 3000 keeps the spin inside one stage's kernels."""
    from .resident import DIE_OMP_DEFAULTS

    env = dict(os.environ)
    for k, v in DIE_OMP_DEFAULTS.items():
        env.setdefault(k, v)
    return env


def fork_workers() -> bool:
    """Start the dies by forking one launcher (Linux; CHIPFUSE_FORK_WORKERS=0 starts one interpreter per die)."""
    return sys.platform.startswith("linux") and os.environ.get("CHIPFUSE_FORK_WORKERS", "1") not in ("0", "no", "off")


def dist_initialized() -> bool:
    """torch.distributed's default group is up in this process (False if torch is not even imported yet)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def free_port() -> int:
    """A TCP port free on loopback right now, for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ForkedWorker:
    """A die forked by the launcher, seen through Popen's poll / wait / kill / pid.

    It is the launcher's child, not ours: the launcher reaps it and writes its exit status (Popen's
    convention, -signal or the code) to a file, which poll() reads."""

    def __init__(self, pid: int, status: Path, launcher: subprocess.Popen | ResidentProcess):
        self.pid, self._status, self._launcher = pid, status, launcher
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._status.exists():
                self.returncode = int(self._status.read_text())
            elif self._launcher.poll() is not None and not os.path.exists(f"/proc/{self.pid}"):
                self.returncode = self._launcher.returncode or -9  # the launcher died before reaping it
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"die pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class WorkerDeath:
    """A worker process that ended on its own: which die, and why (a signal or an exit code)."""

    rank: int
    die: str
    pid: int
    returncode: int  # Popen's convention: -signal, else the exit code
    log_tail: str = ""  # the last line the worker wrote to its log

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    @property
    def exit_code(self) -> int | None:
        return self.returncode if self.returncode >= 0 else None

    def error(self) -> DeviceError:
        how = f"was killed by signal {self.signal}" if self.signal else f"exited with code {self.exit_code}"
        tail = f": {self.log_tail}" if self.log_tail else ""
        return DeviceError(f"die {self.die} (worker rank {self.rank}, pid {self.pid}) {how}{tail}")


class Executor:
    """The worker processes of a plan's stages (rank k runs stage k-1; the host is rank 0). With `plan` None,
    bare dies by name (`dies`) for a subclass's own setup (runtime.tasks)."""

    def __init__(self, plan: Plan | None, model_path: Path, threads: int, *,
                 on_status: Callable[[str], None] = lambda m: None, marks: dict[str, float] | None = None,
                 trace: bool = False, dies: list[str] | None = None, adapter: str | None = None):
        self.plan, self.model_path, self.threads, self.trace = plan, model_path, threads, trace
        self.adapter = adapter  # a LoRA adapter folder every die serves with its layers (runtime.adapters)
        self.dies = [st.die for st in plan.stages] if plan is not None else list(dies or [])
        self.clocks: list[tuple[float, float]] = []  # per die: (offset_s, uncertainty_s) against ours, when tracing
        # (0, 0) for a die on this machine (same boot id: the same wall clock), else measured by round trips
        self.n_stages = len(self.dies)
        self.world = self.n_stages + 1
        self.marks = marks if marks is not None else {}
        self._status = on_status
        self.procs: list[subprocess.Popen | ForkedWorker] = []
        self.logs: list[Path] = []
        self._logdir: Path | None = None  # the workers' logs, exit statuses and stats (None: started by hand)
        self.master = ""
        self.worker_info: list[dict] = []
        self.death: WorkerDeath | None = None  # set by the watchdog when a worker dies on its own
        self.on_death: list[Callable[[WorkerDeath], None]] = []  # called once, from the watchdog thread
        self.to_first: Fanout | None = None
        self.from_last: Channel | None = None
        self._launcher: subprocess.Popen | ResidentProcess | None = None
        self._stopping = False
        self.resident = False  # the dies were forked by a resident launcher (runtime.resident), not a new process

    # ---------------------------------------------------------------- start-up
    def start(self, spawn: bool, master: str | None, timeout_s: float, meanwhile: Callable[[], None] = lambda: None
              ) -> None:
        """Start (spawn) or await (spawn=False) the workers and join the rendezvous with them.

        `meanwhile` runs on this thread once the rendezvous server is up, while the dies import and
        join (the host's own slow start-up work, e.g. loading the tokenizer, overlaps theirs)."""
        if dist_initialized():
            raise DeviceError(ONE_PER_PROCESS)
        host, port = (master.rsplit(":", 1) if master else ("127.0.0.1", "0"))
        self.master = f"{host}:{int(port) or free_port()}"
        err: list[BaseException] = []
        forked = spawn and fork_workers()
        self.marks["spawned"] = time.time()
        if forked:  # before this process imports torch: the launcher imports its own copy meanwhile
            self._make_logdir()
            self._launch_forked(self._worker_args(timeout_s))
        import torch.distributed as dist

        def init():
            try:
                dist.init_process_group("gloo", init_method=f"tcp://{self.master}", rank=0, world_size=self.world,
                                        timeout=timedelta(seconds=timeout_s))
            except BaseException as e:  # reported below
                err.append(e)

        # the rendezvous server before the dies: a die that finds it not listening backs off for most of a second
        # (the forked dies' launcher waits for it to listen)
        t = threading.Thread(target=init, daemon=True)
        t.start()
        meanwhile()  # started after this thread's own torch import, which the dies wait for
        if forked:
            self._forked_pids()
        elif spawn:
            self._make_logdir()
            for rank, log in enumerate(self.logs, start=1):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "chipfuse.runtime.worker", "--rank", str(rank), *self._worker_args(timeout_s)],
                    stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True, env=worker_env()))
        else:
            self._status(f"waiting for {self.world - 1} workers: chipfuse worker --rank K --world {self.world} "
                         f"--master {self.master}  (K = 1..{self.world - 1})")
        self._status(f"starting {self.n_stages} worker process(es)")
        threading.Thread(target=self._watchdog, name="chipfuse-watchdog", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while t.is_alive():
            t.join(0.05)
            death = self._first_death()
            if death is not None:
                self.kill()
                raise death.error()
            if time.monotonic() > deadline:
                self.kill()
                raise DeviceError(f"workers did not join the rendezvous at {self.master} within {timeout_s:.0f} s")
        if err:
            self.kill()
            raise self.error() or DeviceError(f"rendezvous at {self.master} failed: {err[0]}")
        self.marks["joined"] = time.time()

    def setup(self) -> list[dict]:
        """Send each die the plan; collect what it loaded and check it fits its memory; open the pipeline's ends."""
        from .recorder import boot_id
        from .transport import Channel, Fanout, inline_bytes, places, recv_json, send_json, tensor_groups

        try:
            plan_json = self.plan.model_dump(mode="json", by_alias=True)
            for rank in range(1, self.world):
                send_json({"plan": plan_json, "weights": str(self.model_path), "threads": self.threads,
                           "trace": self.trace, "boot_id": boot_id(), "adapter": self.adapter,
                           "stats_dir": str(self._logdir) if self._logdir else None}, rank)
            self._status("dies loading their layers")
            for rank in range(1, self.world):
                info = recv_json(rank)
                stage = self.plan.stages[rank - 1]
                info["plan_weight_bytes"] = stage.weight_bytes
                info["die_memory_bytes"] = stage.memory_bytes
                self._check_resident(stage, info)
                self.worker_info.append(info)
            if self.trace:
                self.clocks = [(0.0, 0.0) if info.get("same_clock") else self._measure_clock(rank)
                               for rank, info in enumerate(self.worker_info, start=1)]
        except BaseException as e:
            self.kill()
            err = e if isinstance(e, DeviceError) else self.error() or DeviceError(f"workers failed during setup: {e}")
            self.shutdown(graceful=False)  # also leaves the process group: this process may open another Device
            raise err from None
        self.groups = tensor_groups(self.plan)  # with the workers: making a group is a collective of all ranks
        self.marks["loaded"] = time.time()
        host = places(self.plan)[0]
        self.to_first = Fanout([Channel(r, inline_bytes(self.plan, 0, r)) for r in host.outbox])
        self.from_last = Channel(host.inbox, inline_bytes(self.plan, host.inbox, 0))
        return self.worker_info

    def send_setups(self, setups: list[dict], status: str) -> list[dict]:
        """Give rank k the setup setups[k-1] and collect what each reports once loaded; any failure kills every
        worker and leaves the process group before it is raised (for executors with their own kind of die)."""
        from .transport import recv_json, send_json

        try:
            for rank, setup in enumerate(setups, start=1):
                send_json(setup, rank)
            self._status(status)
            self.worker_info = [recv_json(rank) for rank in range(1, self.world)]
        except BaseException as e:
            self.kill()
            err = e if isinstance(e, DeviceError) else self.error() or DeviceError(f"workers failed during setup: {e}")
            self.shutdown(graceful=False)
            raise err from None
        return self.worker_info

    def die_stats(self) -> list[dict | None]:
        """Each die's running totals (busy seconds, bytes sent on, steps), as its worker last wrote them; None for a
        die that writes none (started by hand elsewhere) or has not yet."""
        import json

        out: list[dict | None] = []
        for rank in range(1, self.world):
            try:
                out.append(json.loads((self._logdir / f"worker{rank}.stats.json").read_text()) if self._logdir else None)
            except (OSError, ValueError):
                out.append(None)
        return out

    @staticmethod
    def _measure_clock(rank: int) -> tuple[float, float]:
        """A die's clock against ours, from a few JSON round trips (the die answers each with its time)."""
        from .recorder import PINGS, clock_offset
        from .transport import recv_json, send_json

        samples = []
        for _ in range(PINGS):
            t0 = time.time()
            send_json({}, rank)
            peer = float(recv_json(rank)["t"])
            samples.append((t0, peer, time.time()))
        return clock_offset(samples)

    def collect_trace(self) -> list[tuple[list, int]]:
        """Every die's recorded intervals (rank order) on our clock, and how many each dropped. Call between
        requests, from the thread that owns the pipeline's ends: a TRACE message follows the pipeline."""
        from .transport import TRACE, Header, recv_json

        if not self.trace or self.to_first is None:
            raise DeviceError("this device records nothing: open it with trace=True")
        self.to_first.send(Header(TRACE))
        out = []
        for rank in range(1, self.world):
            got = recv_json(rank)
            offset = self.clocks[rank - 1][0]
            rows = [[k, mb, t0 - offset, t1 - offset, n] for k, mb, t0, t1, n in got["rows"]]
            out.append((rows, int(got["dropped"])))
        return out

    @staticmethod
    def _check_resident(stage, info: dict) -> None:
        """A die whose measured weights plus planned KV cache exceed its memory is an error, not a warning."""
        if info["resident_weight_bytes"] + stage.kv_bytes > stage.memory_bytes:
            raise DeviceError(f"{stage.die} holds {info['resident_weight_bytes']:,} weight bytes plus "
                              f"{stage.kv_bytes:,} of KV cache: more than its {stage.memory_bytes:,} bytes")

    def restart(self, rank: int | None = None) -> None:
        """Seam for recovery: bring dead workers back from the plan. Not implemented yet.

        What it needs: gloo's world is fixed at rendezvous, so a restart means every rank (host
        included) leaves the process group and a new rendezvous runs on a fresh port; the new
        workers then take `setup()` again (warm from the prepared-weights cache), and the device's
        in-flight requests are re-prefilled from their tokens so far (the dies' KV caches are lost)."""
        raise NotImplementedError("restarting dead workers is not supported yet: close this Device and open a new "
                                  "one (its dies load from the prepared-weights cache, so a restart is warm)")

    def _make_logdir(self) -> None:
        self._logdir = Path(tempfile.mkdtemp(prefix="chipfuse-workers-"))
        self.logs = [self._logdir / f"worker{rank}.log" for rank in range(1, self.world)]

    def _worker_args(self, timeout_s: float) -> list[str]:
        return ["--world", str(self.world), "--master", self.master, "--parent-pid", str(os.getpid()),
                "--timeout", str(timeout_s)]

    def _launch_forked(self, common: list[str]) -> None:
        """One launcher process imports torch once and forks every die (worker.launch): on a few cores,
        N interpreters each importing torch at once were most of a warm start."""
        from .resident import launch_workers

        ranks = ",".join(str(r) for r in range(1, self.world))
        log = self._logdir / "launcher.log"
        argv = ["--fork-ranks", ranks, "--logdir", str(self._logdir), *common]
        # a resident launcher (`chipfuse launcher start`) forks it with torch already imported
        self._launcher = launch_workers(argv, worker_env(), log)
        self.resident = self._launcher is not None
        if self._launcher is None:
            self._launcher = subprocess.Popen([sys.executable, "-m", "chipfuse.runtime.worker", *argv],
                                              stdout=subprocess.PIPE, stderr=open(log, "w"), start_new_session=True,
                                              env=worker_env(), text=True)

    def _forked_pids(self) -> None:
        """The dies' pids, once the launcher has forked them (it prints them)."""
        log = self._logdir / "launcher.log"
        line = self._launcher.stdout.readline()
        if not line.startswith("PIDS "):
            self._launcher.wait(timeout=10)
            tail = log.read_text().strip().splitlines()
            raise DeviceError(f"the worker launcher exited with code {self._launcher.returncode}"
                              f"{': ' + tail[-1] if tail else ''}")
        pids = dict(item.split(":") for item in line.split()[1:])
        for rank in range(1, self.world):
            self.procs.append(ForkedWorker(int(pids[str(rank)]), self._logdir / f"worker{rank}.status",
                                           self._launcher))

    # ---------------------------------------------------------------- watching
    def error(self) -> DeviceError | None:
        """The recorded worker death as an error (None while every worker lives)."""
        return self.death.error() if self.death else None

    def _watchdog(self) -> None:
        """If a worker dies, record why and kill the others: every blocked transfer then fails fast."""
        while not self._stopping:
            death = self._first_death()
            if death is not None:
                if not self._stopping:
                    self.death = death
                    self.kill()
                    for cb in self.on_death:
                        cb(death)
                return
            time.sleep(0.05)

    def _first_death(self) -> WorkerDeath | None:
        """The worker that died first, if any has exited.

        A killed die takes its neighbours down with it (their sockets close), so when several are
        gone a death by signal is the cause; the others get a moment to show theirs."""
        dead = [(rank, p, p.poll()) for rank, p in enumerate(self.procs, start=1)]
        dead = [d for d in dead if d[2] is not None]
        if not dead:
            return None
        if not any(code < 0 for _, _, code in dead):
            time.sleep(0.2)
            again = [(rank, p, p.poll()) for rank, p in enumerate(self.procs, start=1)]
            dead = [d for d in again if d[2] is not None and d[2] < 0] or dead
        rank, p, code = sorted(dead, key=lambda d: d[2] >= 0)[0]
        tail = ""
        try:
            lines = self.logs[rank - 1].read_text().strip().splitlines()
            tail = lines[-1] if lines else ""
        except (OSError, IndexError):
            pass
        return WorkerDeath(rank, self.dies[rank - 1], p.pid, code, tail)

    # ---------------------------------------------------------------- shutdown
    def shutdown(self, graceful: bool = True) -> None:
        """Stop every worker (asking politely first if `graceful`), reap them, leave the process group."""
        self._stopping = True
        if graceful and self.death is None and dist_initialized() and self.to_first is not None:
            from .transport import SHUTDOWN, Header, recv_json

            def goodbyes():
                try:
                    self.to_first.send(Header(SHUTDOWN))
                    for rank in range(1, self.world):
                        recv_json(rank)
                except BaseException:  # a die already gone: the kill below ends the rest
                    pass

            # on a thread, bounded: a wedged pipeline must not hang the close. Hand-started dies are not ours to
            # wait for: their goodbyes say they have left the loop, so the rendezvous (this process's store) is
            # not torn down under them
            t = threading.Thread(target=goodbyes, daemon=True)
            t.start()
            t.join(10)
            for p in self.procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        self.kill()
        if dist_initialized():
            import torch.distributed as dist

            t = threading.Thread(target=dist.destroy_process_group, daemon=True)
            t.start()
            t.join(5)

    def kill(self) -> None:
        """SIGKILL every worker still running and reap them and the launcher: no process is left behind."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        launcher = self._launcher
        if launcher is not None:
            try:
                launcher.wait(timeout=5)  # it leaves once it has reaped every die
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
            if launcher.stdout:
                launcher.stdout.close()
