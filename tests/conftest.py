"""Session fixtures: example products, a live STAC API serving them, a corpus built from them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.synth import Example, write_example
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.stages.rules import Rules
from stac_server import stac_api

#: Small shards so the example corpus spans several of them.
TEST_RULES = Rules(shard_size=4, split_block_cells=1)


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    """The built-in example products (seed 0, one replica)."""
    return write_example(tmp_path_factory.mktemp("example"), seed=0)


@pytest.fixture(scope="session")
def stac_url(example: Example, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real stac-fastapi-pgstac server on 127.0.0.1 serving the example's items."""
    collection = json.loads(example.collection.read_text())
    items = json.loads(example.stac_items.read_text())["features"]
    with stac_api(tmp_path_factory.mktemp("stac"), collection, items) as url:
        yield url


def build(source: str | Path, out: Path, rules: Rules = TEST_RULES, query: SceneQuery | None = None) -> Path:
    """Build a corpus with two local Dask workers, no progress bars; return its path."""
    build_corpus(
        BuildOptions(source=str(source), out=out, query=query or SceneQuery(), rules=rules, workers=2, progress=False)
    )
    return out


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
    """A corpus built from the example's local archive."""
    return build(example.archive, tmp_path_factory.mktemp("corpus") / "corpus")
