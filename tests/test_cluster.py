"""Builds on a real Dask cluster (``dask scheduler`` and ``dask worker`` processes on 127.0.0.1) under faults:
a worker killed mid-task costs a retry, a lost scheduler stops the build plainly and the same command
resumes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from conftest import patch_content
from dask_cluster import DaskCluster
from spectral_corpus.catalog.synth import Example
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.verify import verify_corpus
from spectral_corpus.stages.failpoints import ENV as FAILPOINT
from spectral_corpus.stages.failpoints import ONCE_ENV

#: How long a client waits for a lost scheduler to come back (dask's default: 30 s), shortened for the tests.
QUICK_GIVE_UP = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
#: The test corpora's rules, as command-line options (``conftest.TEST_RULES``).
RULES = ["--shard-size", "4", "--split-block-cells", "1"]


def _build_command(source: Path, out: Path, scheduler: str) -> list[str]:
    command = [sys.executable, "-m", "spectral_corpus.pipeline.cli", "build", "--source", str(source)]
    return [*command, "--out", str(out), "--scheduler", scheduler, "--quiet", *RULES]


def _assert_same_corpus(built: Path, want: Path) -> None:
    got, expected = patch_content(built), patch_content(want)
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in expected)
    assert verify_corpus(CorpusReader(built)) == []
    assert not (built / "_build").exists()


@pytest.mark.parametrize("point", ["inspected", "shard-written"])
def test_a_worker_killed_mid_task_costs_a_retry_not_the_build(
    example: Example, corpus: Path, tmp_path: Path, point: str
) -> None:
    killed = tmp_path / "killed"
    with DaskCluster(tmp_path, {FAILPOINT: point, ONCE_ENV: str(killed)}) as cluster, Client(cluster.address) as client:
        client.get_task_stream()  # the scheduler keeps a record of every task from now on
        run = subprocess.run(_build_command(example.archive, tmp_path / "corpus", cluster.address), capture_output=True)
        tasks = client.get_task_stream()
    assert killed.exists(), "no worker reached the failpoint"
    assert run.returncode == 0, run.stderr.decode()
    _assert_same_corpus(tmp_path / "corpus", corpus)
    # the products' METADATA.XML were read by tasks on the workers, not by the client
    index = [task for task in tasks if str(task["key"]).startswith("index-")]
    assert len(index) == 1 and index[0]["status"] == "OK" and index[0]["worker"].startswith("tcp://127.0.0.1:")
    assert index[0]["worker"] != cluster.address


def test_a_lost_scheduler_stops_the_build_and_the_same_command_resumes(
    example: Example, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "corpus"
    cluster = DaskCluster(tmp_path)
    cluster.start()
    command = _build_command(example.archive, out, cluster.address)
    try:
        env = {**os.environ, **QUICK_GIVE_UP}
        build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        markers = out / "_build" / "shards"
        deadline = time.monotonic() + 120
        while not (markers.exists() and any(markers.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.02)
        cluster.stop()
        _, stderr = build.communicate(timeout=180)
        assert build.returncode == 2
        assert stderr.startswith(f"spectral-corpus build: error: the Dask scheduler at {cluster.address} went away")
        assert stderr.endswith("the work done so far is kept: run the same command again once the scheduler is back\n")
        assert not (out / "CURRENT").exists() and any(markers.iterdir())
        cluster.start()
        rerun = subprocess.run(command, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
    finally:
        cluster.stop()
    _assert_same_corpus(out, corpus)


def test_an_unreachable_scheduler_is_named(example: Example, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"  # nobody listens there
    command = _build_command(example.archive, tmp_path / "corpus", address)
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **QUICK_GIVE_UP})
    assert run.returncode == 2
    assert run.stderr.startswith(f"spectral-corpus build: error: cannot reach the Dask scheduler at {address}: ")
    assert not (tmp_path / "corpus" / "CURRENT").exists()
