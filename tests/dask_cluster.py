"""A real Dask cluster on 127.0.0.1 from the command line: ``dask scheduler`` and ``dask worker`` processes,
as an HPC job or a Kubernetes deployment starts them, that a test can stop, kill and start again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from distributed import Client


class DaskCluster:
    """A scheduler on a fixed port (it comes back at the same address) and single-threaded workers, each
    under its nanny (which restarts a worker that dies)."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.folder, self.env = folder, {**os.environ, **(env or {})}
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> DaskCluster:
        self.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def start(self, workers: int = 2) -> None:
        """Start the scheduler and ``workers`` workers; return once they are all connected."""
        log = (self.folder / "scheduler.log").open("ab")
        command = ["dask", "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"]
        self.scheduler = subprocess.Popen(command, stdout=log, stderr=log, env=self.env, start_new_session=True)
        for n in range(workers):
            log = (self.folder / f"worker-{n}.log").open("ab")
            command = ["dask", "worker", self.address, "--nthreads", "1", "--memory-limit", "2GiB", "--no-dashboard"]
            command += ["--name", f"worker-{n}"]
            self.workers.append(
                subprocess.Popen(command, stdout=log, stderr=log, env=self.env, start_new_session=True)
            )
        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)

    def stop(self) -> None:
        """Stop the workers (with their nannies) and the scheduler, at once."""
        for process in [*self.workers, *([self.scheduler] if self.scheduler else [])]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.workers, self.scheduler = [], None

    def wait_until_gone(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the scheduler at {self.address} still answers")
