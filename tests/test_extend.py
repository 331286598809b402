"""Extending a corpus: same content as a fresh build, old shards untouched, safe under crashes and readers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pystac_client import Client

from conftest import (
    LATER,
    TEST_RULES,
    as_format_1,
    build,
    copy_archive,
    copy_corpus,
    dask_scheduler,
    kill_after_first_shard,
    patch_content,
    sha256_file,
)
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.stac import search_parameters
from spectral_corpus.catalog.synth import Example
from spectral_corpus.corpus_format import FORMAT_VERSION
from spectral_corpus.pipeline.build import BuildOptions, extend_corpus
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.lock import writer_lock
from spectral_corpus.pipeline.outcomes import DryRun, Published, RunResult, Unchanged
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.verify import verify_corpus
from spectral_corpus.stages.failpoints import ENV
from stac_server import StacServer


@pytest.fixture(scope="module")
def first_archive(example: Example, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_archive(example, tmp_path_factory.mktemp("first") / "archive", keep=False)


@pytest.fixture(scope="module")
def first_corpus(first_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1, built from the first archive; read-only: tests that extend or spoil it take a copy."""
    return build(first_archive, tmp_path_factory.mktemp("first_corpus") / "corpus")


def _extend(corpus: Path, source: Path | str, query: SceneQuery | None = None, **kwargs: object) -> RunResult:
    options = BuildOptions(
        source=str(source),
        out=corpus,
        query=query or SceneQuery(),
        rules=TEST_RULES,
        scheduler=dask_scheduler(),
    )
    return extend_corpus(options, **kwargs)  # type: ignore[arg-type]


def _extend_command(corpus: Path, source: Path, *options: str) -> list[str]:
    """The ``spectral-corpus extend`` command line, run as a separate process (on a local Dask cluster of
    its own unless ``options`` name a scheduler)."""
    return [
        sys.executable,
        "-m",
        "spectral_corpus.pipeline.cli",
        "extend",
        "--corpus",
        str(corpus),
        "--source",
        str(source),
        "--quiet",
        *options,
    ]


def _fresh_copy(first_corpus: Path, tmp_path: Path) -> Path:
    return copy_corpus(first_corpus, tmp_path / "corpus")


@pytest.fixture(scope="module")
def extended(first_corpus: Path, example: Example, tmp_path_factory: pytest.TempPathFactory) -> dict:
    corpus = copy_corpus(first_corpus, tmp_path_factory.mktemp("extended") / "corpus")
    v1 = CorpusReader(corpus)
    before = {
        "shards": {int(s): sha256_file(v1.paths.shard_file(int(s))) for s in v1.table("shards")["shard"]},
        "locations": v1.table("locations")[["location_id", "epsg", "ix", "iy", "split"]],
        "content": patch_content(corpus),
        "mtimes": {s: v1.paths.shard_file(s).stat().st_mtime_ns for s in v1.table("shards")["shard"]},
    }
    manifest = _extend(corpus, example.archive)
    return {"corpus": corpus, "before": before, "manifest": manifest}


def test_extension_equals_a_fresh_build_over_all_scenes(extended: dict, corpus: Path) -> None:
    got, want = patch_content(extended["corpus"]), patch_content(corpus)
    assert sorted(got) == sorted(want)
    for key, pixels in want.items():
        np.testing.assert_array_equal(got[key], pixels, err_msg=str(key))
    locations = CorpusReader(extended["corpus"]).table("locations")
    fresh = CorpusReader(corpus).table("locations")
    key = ["epsg", "ix", "iy"]
    assert sorted(map(tuple, locations.loc[locations["n_obs"] > 0, key].to_numpy().tolist())) == sorted(
        map(tuple, fresh[key].to_numpy().tolist())
    )


def test_a_corpus_of_format_1_is_extended_in_the_current_format(
    first_corpus: Path, extended: dict, example: Example, tmp_path: Path
) -> None:
    old = as_format_1(copy_corpus(first_corpus, tmp_path / "corpus"))
    result = _extend(old, example.archive)
    assert isinstance(result, Published) and result.manifest.format_version == FORMAT_VERSION
    v1, v2, want = CorpusReader(old, 1), CorpusReader(old), CorpusReader(extended["corpus"])
    assert v1.manifest.format_version == 1 and v2.metadata.format_version == FORMAT_VERSION
    pd.testing.assert_frame_equal(v2.table("observations"), want.table("observations"))
    assert v2.table("scenes")["assets"].tolist() == want.table("scenes")["assets"].tolist()
    assert verify_corpus(v1) == [] and verify_corpus(v2) == []


def test_a_new_scene_nearer_its_zone_meridian_retires_existing_cells(
    example: Example, corpus: Path, tmp_path: Path
) -> None:
    zone_32 = ("-DT0000001001_", "-DT0000001002_", "-DT0000001003_")  # every scene that covers A's eastern column
    first = build(copy_archive(example, tmp_path / "archive", keep=False, later=zone_32), tmp_path / "corpus")
    before = CorpusReader(first)
    losing = before.table("observations").query("epsg == 32633")
    manifest = _extend(first, example.archive)
    reader = CorpusReader(first)
    retired = reader.table("retired")
    expected = {(row.product, row.epsg, row.ix, row.iy) for row in losing.itertuples()} - patch_content(corpus).keys()
    assert len(losing) == 4 and len(expected) == 2  # alone, E keeps all 4 cells; the scenario drops 2 of them
    assert {(row.product, row.epsg, row.ix, row.iy) for row in retired.itertuples()} == expected
    assert retired["reason"].str.startswith("zone_overlap: a new cell of another UTM zone").all()
    assert isinstance(manifest, Published) and manifest.manifest.n_retired == 2
    assert patch_content(first).keys() == patch_content(corpus).keys()
    locations = reader.table("locations").merge(retired[["epsg", "ix", "iy"]], on=["epsg", "ix", "iy"])
    old_ids = before.table("locations").merge(retired[["epsg", "ix", "iy"]], on=["epsg", "ix", "iy"])
    assert sorted(locations["location_id"]) == sorted(old_ids["location_id"]) and (locations["n_obs"] == 0).all()
    assert verify_corpus(reader) == []


def test_old_shards_ids_and_splits_are_untouched(extended: dict) -> None:
    reader = CorpusReader(extended["corpus"])
    for shard, digest in extended["before"]["shards"].items():
        assert sha256_file(reader.paths.shard_file(shard)) == digest
        assert reader.paths.shard_file(shard).stat().st_mtime_ns == extended["before"]["mtimes"][shard]
    old = extended["before"]["locations"]
    now = reader.table("locations").merge(old, on=["epsg", "ix", "iy"], suffixes=("", "_old"))
    assert len(now) == len(old)
    assert (now["location_id"] == now["location_id_old"]).all() and (now["split"] == now["split_old"]).all()
    new_shards = reader.table("shards")["shard"]
    assert new_shards.min() == 0 and set(new_shards) > set(extended["before"]["shards"])
    first_new = min(set(new_shards) - set(extended["before"]["shards"]))
    new_obs = reader.table("observations").query("shard >= @first_new")["obs"]
    assert new_obs.min() == first_new * TEST_RULES.shard_size  # new observations start at a shard boundary


def test_the_reprocessed_scene_retires_its_old_observations(extended: dict) -> None:
    reader = CorpusReader(extended["corpus"])
    retired = reader.table("retired")
    old = [k for k in extended["before"]["content"] if "_V010402_" in k[0] and "-DT0000001003_" in k[0]]
    assert len(old) == 3  # D00, D01, D10 of the old version (its D11 was clouded)
    assert sorted(retired["product"].unique()) == sorted({k[0] for k in old})
    assert len(retired) == 3 and set(retired["retired_in"]) == {2}
    assert retired["reason"].str.startswith("superseded by newer processor version").all()
    assert extended["manifest"].manifest.n_retired == 3
    # version 1 is still readable, unchanged
    assert patch_content(extended["corpus"], 1).keys() == extended["before"]["content"].keys()


def test_both_versions_verify_and_are_listed(extended: dict, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = extended["corpus"]
    assert verify_corpus(CorpusReader(corpus, 1)) == []
    assert verify_corpus(CorpusReader(corpus, 2)) == []
    assert main(["versions", str(corpus), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["observations"], r["current"]) for r in rows] == [(1, 9, False), (2, 12, True)]
    assert main(["info", str(corpus), "--version", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["observations"] == 9


def test_statistics_are_updated_over_the_new_training_split(extended: dict) -> None:
    reader = CorpusReader(extended["corpus"])
    observations = reader.table("observations")
    train = observations.loc[observations["split"] == "train", "obs"].to_numpy()
    values = np.asarray(reader.patches[:])[np.sort(train)].astype(np.float64)  # zarr's oindex on shards is slow
    np.testing.assert_allclose(reader.manifest.stats.mean, values.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(reader.manifest.stats.std, values.std(axis=(0, 2, 3)), rtol=1e-6)


def test_dry_run_writes_nothing(first_corpus: Path, example: Example, tmp_path: Path) -> None:
    corpus = _fresh_copy(first_corpus, tmp_path)
    listing = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    preview = _extend(corpus, example.archive, dry_run=True)
    assert isinstance(preview, DryRun)
    assert preview.new_observations == 6  # the reprocessed D's 4 cells and E's 2 kept cells
    assert preview.retired_observations == 3 and preview.observations_after == 12
    assert preview.new_locations == 2
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == listing


def test_an_extension_with_nothing_new_publishes_nothing(
    extended: dict, example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _extend(extended["corpus"], example.archive)
    assert result == Unchanged(version=2)
    assert not (extended["corpus"] / "versions" / "v0003").exists()
    corpus, source = str(extended["corpus"]), str(example.archive)
    assert main(["extend", "--corpus", corpus, "--source", source, "--scheduler", dask_scheduler()]) == 0
    out, err = capsys.readouterr()
    assert out == f"{corpus}: nothing new in {source}; version 2 stays current\n"
    n_scenes = len(CorpusReader(corpus).table("scenes"))
    *bars, catalog, plan, unchanged = err.splitlines()  # as the command line shows them
    assert [catalog, plan, unchanged] == [
        f"catalog     {n_scenes} scenes (0 new to inspect)",
        f"plan        0 new observations, {CorpusReader(corpus).manifest.n_obs} in all",
        "unchanged   nothing new; version 2 stays current",
    ]
    assert bars[-1].startswith("index") and "1/1" in bars[-1]  # the source's products, read on the cluster


def test_a_second_writer_is_refused_with_a_clear_message(
    first_archive: Path, first_corpus: Path, tmp_path: Path
) -> None:
    corpus = _fresh_copy(first_corpus, tmp_path)
    with writer_lock(corpus):
        result = subprocess.run(_extend_command(corpus, first_archive), capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert f"{corpus} is being written by pid {os.getpid()}" in result.stderr
    assert verify_corpus(CorpusReader(corpus)) == []


@pytest.mark.parametrize("point", ["before-commit", "commit-staged", "commit-renamed"])
def test_killed_extension_resumes_to_the_same_corpus(
    point: str, first_corpus: Path, example: Example, extended: dict, tmp_path: Path
) -> None:
    corpus = _fresh_copy(first_corpus, tmp_path)
    command = _extend_command(corpus, example.archive, "--scheduler", dask_scheduler())  # killed while committing
    killed = subprocess.run(command, env={**os.environ, ENV: point}, capture_output=True, check=False)
    assert killed.returncode == -9
    assert CorpusReader(corpus).version == 1  # nothing half-visible: readers still see version 1
    assert verify_corpus(CorpusReader(corpus)) == []
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    assert CorpusReader(corpus).version == 2
    assert verify_corpus(CorpusReader(corpus)) == []
    got, want = patch_content(corpus), patch_content(extended["corpus"])
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_extension_killed_while_writing_shards_resumes(
    first_corpus: Path, example: Example, extended: dict, tmp_path: Path
) -> None:
    corpus = _fresh_copy(first_corpus, tmp_path)
    command = _extend_command(corpus, example.archive, "--workers", "1")
    kill_after_first_shard(command, corpus)
    assert CorpusReader(corpus).version == 1, "the extension finished before it could be killed"
    assert verify_corpus(CorpusReader(corpus)) == []
    resumed = subprocess.run([*command, "--scheduler", dask_scheduler()], capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert verify_corpus(CorpusReader(corpus)) == []
    m = CorpusReader(corpus).manifest
    assert resumed.stdout.strip() == (
        f"published {corpus} version 2: {m.n_obs} observations at {m.n_locations} locations in "
        f"{m.n_shards} shards ({m.n_retired} retired)"
    )
    got, want = patch_content(corpus), patch_content(extended["corpus"])
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_extension_killed_after_publishing_is_finished_by_a_rerun(
    first_corpus: Path, example: Example, tmp_path: Path
) -> None:
    corpus = _fresh_copy(first_corpus, tmp_path)
    command = _extend_command(corpus, example.archive, "--scheduler", dask_scheduler())  # killed after its last task
    assert subprocess.run(command, env={**os.environ, ENV: "published"}, check=False).returncode == -9
    assert CorpusReader(corpus).version == 2 and (corpus / "_build").exists()
    rerun = subprocess.run(command, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "version 2" in rerun.stdout and not (corpus / "_build").exists()
    assert CorpusReader(corpus).version == 2 and verify_corpus(CorpusReader(corpus)) == []


#: Reads version 1 round after round: it touches ``ready`` after its first round and stops after the
#: first round that began once ``stop`` existed, so its rounds span the whole extension and one after it.
READER = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    from spectral_corpus.training import CorpusDataset

    corpus, out, ready, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    dataset = CorpusDataset(corpus, split=None, unit="observation", version=1, normalize=False)
    rounds = []
    while True:
        last = stop.exists()
        digest = hashlib.sha256()
        for i in range(len(dataset)):
            digest.update(dataset[i]["image"].numpy().tobytes())
        rounds.append(digest.hexdigest())
        ready.touch()
        if last:
            break
    json.dump(rounds, open(out, "w"))
    """
)


def test_a_reader_of_version_1_is_not_disturbed_by_an_extension(
    first_corpus: Path, example: Example, tmp_path: Path
) -> None:
    corpus = _fresh_copy(first_corpus, tmp_path)
    script = tmp_path / "reader.py"
    script.write_text(READER)
    rounds, ready, stop = tmp_path / "rounds.json", tmp_path / "ready", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, str(script), str(corpus), str(rounds), str(ready), str(stop)])
    deadline = time.monotonic() + 120
    while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the reader did not read version 1"
    _extend(corpus, example.archive)  # while the reader reads, round after round
    stop.touch()
    assert reader.wait(timeout=120) == 0
    digests = json.loads(rounds.read_text())
    assert len(digests) >= 2 and len(set(digests)) == 1
    assert CorpusReader(corpus).version == 2


def test_verify_finds_a_missing_shard_and_a_dangling_row(first_corpus: Path, tmp_path: Path) -> None:
    corpus = _fresh_copy(first_corpus, tmp_path)
    reader = CorpusReader(corpus)
    observations_path = reader.paths.version_dir(1) / "observations.parquet"
    observations = pd.read_parquet(observations_path)
    observations.loc[0, "location_id"] = 999_999
    observations.to_parquet(observations_path, index=False)
    manifest_path = reader.paths.version_dir(1) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"]["observations"] = sha256_file(observations_path)  # as a buggy writer would
    manifest_path.write_text(json.dumps(manifest))
    reader.paths.shard_file(1).unlink()
    problems = verify_corpus(CorpusReader(corpus))
    assert f"shard 1: file {reader.paths.shard_file(1)} is missing" in problems
    obs = int(observations.loc[0, "obs"])
    assert f"observation {obs}: location_id 999999 is not in the locations table" in problems


def test_an_extension_from_a_stac_api_asks_only_for_what_changed(
    example: Example, stac: StacServer, corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = json.loads(example.stac_items.read_text())["features"]
    first = [item for item in items if not any(t in item["id"] for t in LATER)]
    collection = {**json.loads(example.collection.read_text()), "id": "ENMAP_INCREMENTAL"}
    stac.load(collection, first)
    query = SceneQuery(collection="ENMAP_INCREMENTAL")
    built = build(stac.url, tmp_path / "corpus", query=query)
    mark = max(datetime.fromisoformat(item["properties"]["updated"]) for item in first)
    assert CorpusReader(built).manifest.run["updated_until"] == mark.isoformat()

    # the catalog lists the later scenes, last updated now: only they are asked for and sent
    now = datetime.now(UTC).replace(microsecond=0)
    later = [item for item in items if any(t in item["id"] for t in LATER)]
    stac.load(
        collection, [{**item, "properties": {**item["properties"], "updated": now.isoformat()}} for item in later]
    )
    with caplog.at_level(logging.INFO, logger="spectral_corpus.pipeline"):
        result = _extend(built, stac.url, query)
    assert isinstance(result, Published)
    catalog = caplog.records[0].getMessage()
    assert catalog == f"catalog     6 scenes (2 new to inspect, 2 changed since {mark:%Y-%m-%d %H:%M:%S} UTC)"
    run = result.manifest.run
    assert (run["updated_since"], run["updated_until"]) == (mark.isoformat(), now.isoformat())
    assert run["query"] == SceneQuery(collection="ENMAP_INCREMENTAL").as_dict()  # the query as asked
    got, want = patch_content(built), patch_content(corpus)  # as a fresh build over every scene
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)

    # a server that offers CQL2's temporal functions is asked for exactly these (this one has them, unannounced)
    parameters = search_parameters(replace(query, updated_since=now), 100, cql2=True, temporal=True)
    found = Client.open(stac.url).search(**parameters).items_as_dicts()
    assert sorted(item["id"] for item in found) == sorted(item["id"] for item in later)

    # asked again: only the two scenes updated at the mark come back, and they are known
    assert _extend(built, stac.url, query) == Unchanged(version=2)
    assert _extend(built, stac.url, query, incremental=False) == Unchanged(version=2)  # --full: every scene
