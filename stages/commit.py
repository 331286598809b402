"""Publish a corpus version in one atomic step.

Tables go into a fresh ``versions/vNNNN`` directory (renamed into place whole), then ``CURRENT`` is
replaced atomically: until that last rename a reader sees the previous version, never a half.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import geopandas as gpd
import pandas as pd

from spectral_corpus.corpus_files import LocalFiles
from spectral_corpus.corpus_format import (
    CURRENT,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    TABLES,
    BandStatistics,
    CorpusLayout,
    CorpusMetadata,
    Manifest,
    read_document,
    write_table,
)
from spectral_corpus.stages.failpoints import failpoint
from spectral_corpus.stages.store import sha256_file, write_json_atomic


@dataclass(frozen=True)
class VersionTables:
    """The tables of one corpus version."""

    scenes: gpd.GeoDataFrame
    locations: gpd.GeoDataFrame
    observations: pd.DataFrame
    candidates: pd.DataFrame
    shards: pd.DataFrame
    moments: pd.DataFrame
    retired: pd.DataFrame


def commit_version(
    paths: CorpusLayout,
    version: int,
    tables: VersionTables,
    metadata: CorpusMetadata,
    stats: BandStatistics,
    run: dict[str, Any],
) -> Manifest:
    """Write version ``version``'s tables and manifest (band statistics, what made it), then publish it.

    ``metadata`` (rules, bands) goes to ``corpus.json``; ``run`` (source, query) to the manifest.
    """
    final = paths.version_dir(version)
    if final.exists() and read_current(paths) != version:
        shutil.rmtree(final)  # left by a commit that was killed before it published
    staging = final.with_name(final.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in TABLES:
        write_table(getattr(tables, name), staging / f"{name}.parquet", name)
    manifest = Manifest(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        version=version,
        parent=version - 1 if version > 1 else None,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        n_obs=len(tables.observations),
        n_locations=int((tables.locations["n_obs"] > 0).sum()),
        n_retired=int((tables.retired["retired_in"] == version).sum()),
        n_shards=len(tables.shards),
        tables={name: sha256_file(staging / f"{name}.parquet") for name in TABLES},
        stats=stats,
        run=run,
        rules=metadata.rules,
    )
    write_json_atomic(staging / MANIFEST, manifest.to_json())
    metadata = replace(metadata, format=FORMAT_NAME, format_version=FORMAT_VERSION)
    if not paths.metadata.exists():  # first version: a reader needs it to recognise the corpus at all
        write_json_atomic(paths.metadata, metadata.to_json())
    failpoint("commit-staged")
    staging.rename(final)
    failpoint("commit-renamed")
    write_json_atomic(paths.current, {"version": version})
    # corpus.json describes the current version; each manifest keeps the rules it was made with
    write_json_atomic(paths.metadata, metadata.to_json())
    return manifest


def read_current(paths: CorpusLayout) -> int | None:
    """The published version number, or None before the first commit."""
    if not paths.current.exists():
        return None
    return int(read_document(LocalFiles(paths.root), CURRENT)["version"])
