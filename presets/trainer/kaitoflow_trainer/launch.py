"""One training process per GPU on a multi-GPU node: the trainer started again N times with the
environment torch.distributed reads (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

torchrun and accelerate launch do the same, but exit 1 whenever a worker fails, whatever the
worker's own exit code was; the Job's failure policy tells a bad config (2), bad data (3), out of
memory (4) and a refused download (5) from a failure worth retrying by that code. So this launcher
keeps the first failing worker's code and reason, stops the others, and hands both on.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

# Set in every worker; a process that has it is a worker, not the launcher.
RANK_ENV = "LOCAL_RANK"


def free_port() -> int:
    """A TCP port on the loopback interface nobody listens on now, for the process group's
    rendezvous (the pod has the node's network namespace to itself only with hostNetwork)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(env: Mapping[str, str], rank: int, world: int, port: int, reason_file: str) -> dict[str, str]:
    out = dict(env)
    out.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            # Each worker writes its failure reason to a file of its own; the launcher writes the
            # termination log once, from the worker that failed first.
            "KAITOFLOW_TERMINATION_LOG": reason_file,
        }
    )
    return out


def telling(codes: Sequence[int | None]) -> int | None:
    """The rank whose failure says most: a classified exit code (2 and up: config, data, memory,
    download) before a generic one, a lower rank first."""
    failed = [(c in (1, None) or c < 0, r) for r, c in enumerate(codes) if c not in (None, 0)]
    return min(failed)[1] if failed else None


def run(
    argv: list[str],
    processes: int,
    env: Mapping[str, str] | None = None,
    popen: Callable[..., subprocess.Popen] = subprocess.Popen,
    poll_seconds: float = 0.5,
    grace_seconds: float = 5,
) -> tuple[int, str]:
    """Run `argv` as `processes` workers and wait for them. Returns (exit_code, reason): 0 and ""
    when every worker succeeded, else the first failing worker's code and its reason."""
    env = dict(os.environ if env is None else env)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kaitoflow-launch-") as tmp:
        reasons = [os.path.join(tmp, f"rank-{r:d}") for r in range(processes)]
        workers = [popen(argv, env=worker_env(env, r, processes, port, reasons[r])) for r in range(processes)]
        failed = None

        # job-run forwards the pod's SIGTERM (deletion, eviction, deadline) to this process: pass it
        # on, and let the workers' own exits decide the outcome.
        def forward(signum: int, _frame: FrameType | None) -> None:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                codes = [w.poll() for w in workers]
                if all(c == 0 for c in codes):
                    break
                if any(c not in (None, 0) for c in codes):
                    # The others usually fail a moment later on the broken collective (exit 1):
                    # give them that moment, then keep the most telling failure.
                    deadline = time.monotonic() + grace_seconds
                    while any(c is None for c in codes) and time.monotonic() < deadline:
                        time.sleep(poll_seconds)
                        codes = [w.poll() for w in workers]
                    failed = telling(codes)
                    break
                time.sleep(poll_seconds)
        finally:
            # A worker that failed leaves the others blocked in a collective forever: end them.
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait()
        if failed is None:
            restore(previous)
            return 0, ""
        code = workers[failed].returncode
        if code < 0:  # killed by a signal: the shell's convention, as Kubernetes reports it
            code = 128 - code
        try:
            with open(reasons[failed], encoding="utf-8") as f:
                reason = f.read().strip()
        except OSError:
            reason = ""
        # Restored only now: a second SIGTERM must not end this process before the reason is out.
        restore(previous)
        return code, reason or f"training process {failed:d} of {processes:d} exited with code {code:d}"


def restore(handlers: Mapping[signal.Signals, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
