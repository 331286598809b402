"""Session fixtures: example products, a live STAC API serving them, a corpus built from them.

Expensive things are made once per session and shared: one STAC API (PostgreSQL + pgstac +
stac-fastapi-pgstac) that test modules load their own collections into, one Dask cluster (two
single-threaded worker processes, in a child process of its own) that ``build`` runs on, and the
example corpus. Tests read shared corpora only; a test that changes a corpus works on a copy
(``copy_corpus``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spectral_corpus.catalog.product import is_product_name
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.synth import Example, write_example
from spectral_corpus.corpus_files import LocalFiles
from spectral_corpus.corpus_format import CorpusLayout
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.rules import Rules
from stac_server import StacServer, stac_server

#: Small shards so the example corpus spans several of them.
TEST_RULES = Rules(shard_size=4, split_block_cells=1)

#: Runs a LocalCluster of two single-threaded worker processes until its stdin closes. Its stdout carries
#: the scheduler's address only; whatever the cluster or a task prints goes to stderr.
_CLUSTER_SCRIPT = """
import logging, os, sys
from distributed import LocalCluster
address = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
logging.getLogger("distributed").setLevel(logging.ERROR)
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                  silence_logs=logging.ERROR) as cluster:
    address.write(cluster.scheduler_address + "\\n")
    address.close()
    sys.stdin.read()
"""
_cluster: subprocess.Popen[str] | None = None
_scheduler_address: str | None = None


def dask_scheduler() -> str:
    """The address of the session's Dask scheduler (started on first use, stopped at the session's end).

    The cluster lives in a child process of its own, so the test process holds no scheduler threads
    and its worker processes are no children of it.
    """
    global _cluster, _scheduler_address
    if _scheduler_address is None:
        _cluster = subprocess.Popen(
            [sys.executable, "-c", _CLUSTER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert _cluster.stdout is not None
        address = _cluster.stdout.readline().strip()
        if not address.startswith("tcp://"):
            _cluster.kill()
            raise RuntimeError(f"the session's Dask cluster did not start (exit code {_cluster.wait()})")
        _scheduler_address = address
    return _scheduler_address


@pytest.fixture(scope="session", autouse=True)
def _stop_dask_cluster() -> Iterator[None]:
    """Stop the session's Dask cluster, if a test started it."""
    yield
    if _cluster is not None:
        assert _cluster.stdin is not None
        _cluster.stdin.close()  # the cluster closes, then its process ends
        try:
            _cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _cluster.kill()
            _cluster.wait()


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    """The built-in example products (seed 0, one replica)."""
    return write_example(tmp_path_factory.mktemp("example"), seed=0)


@pytest.fixture(scope="session")
def stac() -> Iterator[StacServer]:
    """The session's stac-fastapi-pgstac server on 127.0.0.1; modules ``load`` their collections into it.

    Its PostgreSQL data lies outside pytest's temporary root: another pytest session starting
    meanwhile makes that root private again, and the ``postgres`` user could not reach its data.
    """
    workdir = Path(tempfile.mkdtemp(prefix="spectral-corpus-stac-"))
    try:
        with stac_server(workdir) as server:
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def stac_url(stac: StacServer, example: Example) -> str:
    """The session's STAC API, its ENMAP_HSI_L2A collection holding the example's items."""
    collection = json.loads(example.collection.read_text())
    items = json.loads(example.stac_items.read_text())["features"]
    stac.load(collection, items)
    return stac.url


def build(
    source: str | Path,
    out: Path,
    rules: Rules = TEST_RULES,
    query: SceneQuery | None = None,
    local_cluster: bool = False,
) -> Path:
    """Build a corpus, no progress bars; return its path.

    It runs on the session's Dask cluster, or with ``local_cluster`` on a local cluster of two worker
    processes of its own (the command line's default).
    """
    scheduler = None if local_cluster else dask_scheduler()
    query = query or SceneQuery()
    build_corpus(BuildOptions(source=str(source), out=out, query=query, rules=rules, workers=2, scheduler=scheduler))
    return out


#: Left out of the first build: the reprocessed D and the zone-33 scene E.
LATER = ("_V010500_", "-DT0000001004_")


def copy_archive(example: Example, dest: Path, keep: bool, later: tuple[str, ...] = LATER) -> Path:
    """Hard-linked copy of the example archive with (keep=True) or without the ``later`` products.

    Products are folders or ZIPs at any depth (ZIPs lie in an order folder, each in an item folder).
    """
    shutil.copytree(example.archive, dest, copy_function=os.link)
    products = [p for p in dest.rglob("*") if is_product_name(p.stem if p.suffix == ".ZIP" else p.name)]
    for entry in sorted(products):
        if entry.exists() and any(t in entry.name for t in later) != keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return dest


def patch_content(path: str | Path, version: int | None = None) -> dict[tuple, np.ndarray]:
    """Observation key (product, epsg, ix, iy) -> pixels, for a version."""
    reader = CorpusReader(path, version)
    observations = reader.table("observations")
    return {
        (row.product, row.epsg, row.ix, row.iy): reader.read_patch(row.obs)
        for row in observations.itertuples(index=False)
    }


def copy_corpus(corpus: Path, dest: Path) -> Path:
    """A private copy of ``corpus`` (real copies, no hard links: the copy may be changed in place)."""
    shutil.copytree(corpus, dest)
    return dest


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a local file."""
    return LocalFiles(path.parent).sha256(path.name)


def as_format_1(corpus: Path) -> Path:
    """Turn ``corpus`` (version 1 only) into what format version 1 wrote: scene assets as JSON text, version 1
    documents. Changed files are replaced, never written through, so ``corpus`` may hold hard links."""
    layout = CorpusLayout(corpus)
    path = layout.table(1, "scenes")
    table = pq.read_table(path)
    assets = [json.dumps(dict(pairs), sort_keys=True) for pairs in table["assets"].to_pylist()]
    column = table.schema.get_field_index("assets")
    table = table.set_column(column, pa.field("assets", pa.large_string()), pa.array(assets, pa.large_string()))
    table = table.drop_columns(["rejection", "updated"])
    path.unlink()
    pq.write_table(table, path)
    manifest = json.loads(layout.manifest(1).read_text())
    manifest["tables"]["scenes"] = sha256_file(path)
    metadata = json.loads(layout.metadata.read_text())
    for document, values in ((layout.metadata, metadata), (layout.manifest(1), manifest)):
        document.unlink()
        document.write_text(json.dumps({**values, "format_version": 1}))
    return corpus


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread: small CPU steps run steadier (and reproduce bit for bit) on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kill_after_first_shard(command: list[str], corpus: Path) -> None:
    """Run a build or extend command and SIGKILL its whole process group once a first shard is written."""
    process = subprocess.Popen(command, start_new_session=True)
    markers = corpus / "_build" / "shards"
    deadline = time.monotonic() + 120
    while not (markers.exists() and any(markers.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="session")
def corpus(example: Example, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus built from the example's local archive, on a local Dask cluster of its own (the default)."""
    return build(example.archive, tmp_path_factory.mktemp("corpus") / "corpus", local_cluster=True)
