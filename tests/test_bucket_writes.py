"""Writing a corpus into an S3 bucket (a real S3-compatible server on 127.0.0.1): the same corpus as on disk,
one writer at a time, nothing half-visible after a crash, readers of a version never disturbed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import build, copy_archive, patch_content
from s3_server import copy_prefix, create_bucket, s3_server
from spectral_corpus.catalog.synth import Example
from spectral_corpus.corpus_files import WriteConflict, corpus_files
from spectral_corpus.corpus_format import BUILD, CURRENT, WRITER_LOCK, version_key
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.errors import CorpusLockedError
from spectral_corpus.pipeline.lock import LEASE_ENV, writer_lock
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.verify import verify_corpus
from spectral_corpus.stages.commit import PublishConflict, VersionTables, commit_version
from spectral_corpus.stages.failpoints import ENV as FAILPOINT
from test_extend import READER

BUCKET = "written"
#: The test corpora's rules, as command-line options (``conftest.TEST_RULES``).
RULES = ["--shard-size", "4", "--split-block-cells", "1"]


def _cli(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "spectral_corpus.pipeline.cli", command, *args, "--quiet"]


@pytest.fixture(scope="module")
def bucket() -> Iterator[str]:
    with s3_server():
        create_bucket(BUCKET)
        yield f"s3://{BUCKET}"


@pytest.fixture(scope="module")
def first_archive(example: Example, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_archive(example, tmp_path_factory.mktemp("first") / "archive", keep=False)


@pytest.fixture(scope="module")
def first_in_bucket(bucket: str, first_archive: Path) -> str:
    """Version 1 built into the bucket by the command line (a local cluster of its own: its workers write)."""
    url = f"{bucket}/first"
    assert main(["build", "--source", str(first_archive), "--out", url, "--quiet", *RULES]) == 0
    return url


def _copy(first_in_bucket: str, name: str) -> str:
    return copy_prefix(first_in_bucket, f"{first_in_bucket.rsplit('/', 1)[0]}/{name}")


def test_a_build_and_an_extension_in_the_bucket_equal_those_on_disk(
    first_in_bucket: str, first_archive: Path, example: Example, corpus: Path, tmp_path: Path
) -> None:
    on_disk = build(first_archive, tmp_path / "first")
    got, want = patch_content(first_in_bucket), patch_content(on_disk)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    files = corpus_files(first_in_bucket)
    assert files.list(BUILD) == []  # the work state is gone once published
    assert json.loads(files.read(WRITER_LOCK))["released"] is True

    url = _copy(first_in_bucket, "extended")
    assert main(["extend", "--corpus", url, "--source", str(example.archive), "--quiet"]) == 0
    extended = CorpusReader(url)
    assert extended.version == 2 and verify_corpus(extended) == []
    got, want = patch_content(url), patch_content(corpus)  # an extension gives what a fresh build over all gives
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert patch_content(url, 1).keys() == patch_content(first_in_bucket).keys()
    assert main(["verify", url]) == 0


def test_training_reads_the_corpus_built_in_the_bucket(first_in_bucket: str, tmp_path: Path) -> None:
    from spectral_corpus.training.trainer import train
    from test_trainer import tiny

    config = tiny(tmp_path, corpus=first_in_bucket, method="moco", moco_queue=8, image_size=16, batch_size=2)
    assert train(replace(config, max_steps=2, num_workers=1, vit_depth=1))["step"] == 2


def test_two_writers_racing_one_publishes_the_other_is_told(bucket: str, first_archive: Path) -> None:
    url = f"{bucket}/race"
    commands = [_cli("build", "--source", str(first_archive), "--out", url, *RULES) for _ in range(2)]
    runs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    results = [(*run.communicate(timeout=300), run.returncode) for run in runs]
    assert sorted(code for _, _, code in results) == [0, 2]
    (published, _, _), (_, refused, _) = sorted(results, key=lambda result: result[2])
    assert published.startswith(f"published {url} version 1: ")
    assert refused.startswith(f"spectral-corpus build: error: {url} is being written by pid ")
    assert "wait for it to finish, or for the lease to expire if that writer died" in refused
    assert CorpusReader(url).version == 1


def test_the_lease_keeps_a_second_writer_out_while_its_holder_lives(
    first_in_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _copy(first_in_bucket, "leased")
    monkeypatch.setenv(LEASE_ENV, "1")
    with writer_lock(url):
        time.sleep(2.5)  # past the term: the heartbeat renewed it
        with (
            pytest.raises(CorpusLockedError, match=f"^{url} is being written by pid {os.getpid()} on "),
            writer_lock(url),
        ):
            pass
        refused = subprocess.run(_cli("resplit", url, "--split-seed", "3"), capture_output=True, text=True)
        assert refused.returncode == 2 and f"{url} is being written by pid {os.getpid()}" in refused.stderr
    files = corpus_files(url)
    # a holder on another machine that stopped renewing: its lease runs out, and the next writer takes over
    stale = {"holder": "pid 1 on elsewhere", "host": "elsewhere", "pid": 1, "expires": time.time() + 2}
    files.write(WRITER_LOCK, json.dumps({**stale, "released": False}).encode())
    with pytest.raises(CorpusLockedError, match="is being written by pid 1 on elsewhere"), writer_lock(url):
        pass
    time.sleep(2.2)
    with writer_lock(url):
        assert json.loads(files.read(WRITER_LOCK))["pid"] == os.getpid()


def test_of_two_commits_of_the_same_version_only_the_first_publishes(first_in_bucket: str) -> None:
    url = _copy(first_in_bucket, "commits")
    reader = CorpusReader(url)
    tables = VersionTables(**{name: reader.table(name) for name in VersionTables.__dataclass_fields__})
    files = reader.files
    commit_version(files, 2, tables, reader.metadata, reader.manifest.stats, {"source": "first"})
    published = {key: files.read(key) for key in files.list(version_key(2))}
    with pytest.raises(PublishConflict, match=f"^{url}: another writer published version 2 meanwhile; "):
        commit_version(files, 2, tables, reader.metadata, reader.manifest.stats, {"source": "second"})
    assert {key: files.read(key) for key in files.list(version_key(2))} == published  # untouched
    assert CorpusReader(url).manifest.run == {"source": "first"}
    # the pointer's own compare-and-swap: a writer holding an old state of CURRENT cannot move it
    stale_tag = files.read_tagged(CURRENT)[1]
    files.write(CURRENT, json.dumps({"version": 2}).encode())  # the same version, other bytes: another ETag
    with pytest.raises(WriteConflict, match=f"^{url}/CURRENT was changed by another writer$"):
        files.write_if(CURRENT, b'{"version": 9}', stale_tag)
    assert CorpusReader(url).version == 2


def test_a_writer_killed_mid_commit_leaves_version_1_and_a_rerun_finishes(
    first_in_bucket: str, example: Example
) -> None:
    url = _copy(first_in_bucket, "killed")
    command = _cli("extend", "--corpus", url, "--source", str(example.archive))
    assert subprocess.run(command, env={**os.environ, FAILPOINT: "commit-staged"}, check=False).returncode == -9
    files = corpus_files(url)
    half = files.list(version_key(2))
    assert 0 < len(half) < 8  # some of version 2's files were written, not all
    assert CorpusReader(url).version == 1 and verify_corpus(CorpusReader(url)) == []  # nothing of it is visible
    rerun = subprocess.run(command, capture_output=True, text=True, check=False)  # the holder is gone: no wait
    assert rerun.returncode == 0, rerun.stderr
    assert CorpusReader(url).version == 2 and verify_corpus(CorpusReader(url)) == []
    extended = _copy(first_in_bucket, "extended-once")
    assert main(["extend", "--corpus", extended, "--source", str(example.archive), "--quiet"]) == 0
    got, want = patch_content(url), patch_content(extended)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_a_reader_of_version_1_in_the_bucket_is_not_disturbed(
    first_in_bucket: str, example: Example, tmp_path: Path
) -> None:
    url = _copy(first_in_bucket, "read-while-extended")
    script = tmp_path / "reader.py"
    script.write_text(READER)
    rounds, ready, stop = tmp_path / "rounds.json", tmp_path / "ready", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, str(script), url, str(rounds), str(ready), str(stop)])
    deadline = time.monotonic() + 120
    while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the reader did not read version 1"
    assert main(["extend", "--corpus", url, "--source", str(example.archive), "--quiet"]) == 0
    stop.touch()
    assert reader.wait(timeout=120) == 0
    digests = json.loads(rounds.read_text())
    assert len(digests) >= 2 and len(set(digests)) == 1
    assert CorpusReader(url).version == 2
