"""Publish a corpus version in one atomic step.

The version's tables and manifest go into a new folder ``versions/vNNNN`` (``CorpusFiles.write_folder``:
on disk a staging folder renamed into place whole; in a bucket files created one by one, never over
another writer's). Then the small pointer ``CURRENT`` is swapped from N-1 to N by a conditional write:
until that last write a reader sees the previous version, never a half, and of two writers that both
got this far only the first publishes (the other gets PublishConflict; see ``pipeline.lock``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import geopandas as gpd
import pandas as pd

from spectral_corpus.corpus_files import CorpusFiles, WriteConflict
from spectral_corpus.corpus_format import (
    CURRENT,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    METADATA,
    TABLES,
    BandStatistics,
    CorpusMetadata,
    FormatError,
    Manifest,
    json_bytes,
    table_bytes,
    version_key,
)
from spectral_corpus.stages.errors import StageError
from spectral_corpus.stages.failpoints import failpoint


class PublishConflict(StageError):
    """Another writer published a version while this one was being written; this one is not published."""


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
    files: CorpusFiles,
    version: int,
    tables: VersionTables,
    metadata: CorpusMetadata,
    stats: BandStatistics,
    run: dict[str, Any],
) -> Manifest:
    """Write version ``version``'s tables and manifest (band statistics, what made it), then publish it.

    ``metadata`` (rules, bands) goes to ``corpus.json``; ``run`` (source, query) to the manifest.
    """
    _check_parent(files, read_current(files), version)  # before write_folder, which replaces leftovers
    written = {f"{name}.parquet": table_bytes(getattr(tables, name), name) for name in TABLES}
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
        tables={name: hashlib.sha256(written[f"{name}.parquet"]).hexdigest() for name in TABLES},
        stats=stats,
        run=run,
        rules=metadata.rules,
    )
    written[MANIFEST] = json_bytes(manifest.to_json())
    metadata = replace(metadata, format=FORMAT_NAME, format_version=FORMAT_VERSION)
    if not files.exists(METADATA):  # first version: a reader needs it to recognise the corpus at all
        files.write(METADATA, json_bytes(metadata.to_json()))
    files.write_folder(version_key(version), written)
    failpoint("commit-renamed")
    _swap_current(files, version)
    # corpus.json describes the current version; each manifest keeps the rules it was made with
    files.write(METADATA, json_bytes(metadata.to_json()))
    return manifest


def _swap_current(files: CorpusFiles, version: int) -> None:
    """Point CURRENT from ``version - 1`` (or nothing) to ``version``, unless another writer moved it."""
    data, tag = files.read_tagged(CURRENT)
    _check_parent(files, _version_in(files, data), version)
    try:
        files.write_if(CURRENT, json_bytes({"version": version}), tag)
    except WriteConflict:
        raise PublishConflict(f"{files.root}: another writer published a version meanwhile") from None


def _check_parent(files: CorpusFiles, current: int | None, version: int) -> None:
    """Version ``version`` may only follow ``version - 1`` (the first, nothing)."""
    if current != (version - 1 if version > 1 else None):
        raise PublishConflict(
            f"{files.root}: another writer published version {current} meanwhile; "
            f"this run's version {version} is not published"
        )


def read_current(files: CorpusFiles) -> int | None:
    """The published version number, or None before the first commit."""
    return _version_in(files, files.read_tagged(CURRENT)[0])


def _version_in(files: CorpusFiles, data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        return int(json.loads(data)["version"])
    except (ValueError, KeyError, TypeError) as error:
        raise FormatError(f"{files.root}/{CURRENT} is not a version pointer: {error!r}") from None
