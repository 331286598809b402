"""Verify a corpus version: recompute shard checksums and cross-check tables and store."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spectral_corpus.corpus_format import TABLES, shard_file_key, table_key
from spectral_corpus.pipeline.reader import CorpusReader


def verify_corpus(reader: CorpusReader) -> list[str]:
    """Every mismatch found, as precise messages; an empty list means the version is intact."""
    problems = _check_table_files(reader)
    if problems:
        return problems
    observations = reader.table("observations")
    shards = reader.table("shards")
    problems += _check_shards(reader, shards)
    problems += _check_observations(reader, observations, shards)
    problems += _check_references(observations, reader.table("locations"), reader.table("scenes"))
    return problems


def _check_table_files(reader: CorpusReader) -> list[str]:
    files, problems = reader.files, []
    if reader.manifest.format_version >= 2:  # format 1 began without the moments and retired tables
        problems += [f"the manifest lists no {name} table" for name in TABLES if name not in reader.manifest.tables]
    for name in reader.manifest.tables:
        key = table_key(reader.version, name)
        if not files.exists(key):
            problems.append(f"{files.root}/{key}: table is missing")
        elif files.sha256(key) != reader.manifest.tables[name]:
            problems.append(f"{files.root}/{key}: checksum differs from the manifest")
    return problems


def _check_shards(reader: CorpusReader, shards: pd.DataFrame) -> list[str]:
    files, problems = reader.files, []
    for shard, digest in zip(shards["shard"], shards["sha256"], strict=True):
        key = shard_file_key(int(shard))
        if not files.exists(key):
            problems.append(f"shard {shard}: file {files.root}/{key} is missing")
        elif files.sha256(key) != digest:
            problems.append(f"shard {shard}: checksum of {files.root}/{key} differs from the shards table")
    return problems


def _check_observations(reader: CorpusReader, observations: pd.DataFrame, shards: pd.DataFrame) -> list[str]:
    problems = []
    size = int((reader.patches.shards or reader.patches.chunks)[0])
    if len(observations) != reader.manifest.n_obs:
        problems.append(f"observations table has {len(observations)} rows, manifest says {reader.manifest.n_obs}")
    if observations["obs"].duplicated().any():
        problems.append("observations table lists an obs index twice")
    beyond = observations[observations["obs"] >= reader.patches.shape[0]]
    problems += [f"observation {o}: beyond the patch array ({reader.patches.shape[0]} rows)" for o in beyond["obs"]]
    misplaced = observations[
        (observations["shard"] != observations["obs"] // size) | (observations["slot"] != observations["obs"] % size)
    ]
    problems += [f"observation {o}: shard/slot do not match its index" for o in misplaced["obs"]]
    ranges = shards.set_index("shard")[["first_obs", "n_obs"]]
    placed = observations.join(ranges, on="shard")
    unplaced = placed[placed["first_obs"].isna()]
    problems += [
        f"observation {o}: shard {s} is not in the shards table"
        for o, s in zip(unplaced["obs"], unplaced["shard"], strict=True)
    ]
    outside = placed[(placed["obs"] < placed["first_obs"]) | (placed["obs"] >= placed["first_obs"] + placed["n_obs"])]
    problems += [
        f"observation {o}: not among the rows written to shard {s}"
        for o, s in zip(outside["obs"], outside["shard"], strict=True)
    ]
    return problems


def _check_references(observations: pd.DataFrame, locations: pd.DataFrame, scenes: pd.DataFrame) -> list[str]:
    problems = []
    for column, table in (("location_id", locations), ("scene_id", scenes)):
        dangling = observations[~np.isin(observations[column], table[column])]
        problems += [
            f"observation {o}: {column} {v} is not in the {column.split('_')[0]}s table"
            for o, v in zip(dangling["obs"], dangling[column], strict=True)
        ]
    return problems
