"""Verify a corpus version: recompute shard checksums and cross-check tables and store."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spectral_corpus.corpus_format import TABLES
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.store import sha256_file


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
    problems = []
    for name in TABLES:
        path = reader.paths.table(reader.version, name)
        if not path.exists():
            problems.append(f"{path}: table is missing")
        elif sha256_file(path) != reader.manifest.tables[name]:
            problems.append(f"{path}: checksum differs from the manifest")
    return problems


def _check_shards(reader: CorpusReader, shards: pd.DataFrame) -> list[str]:
    problems = []
    for shard, digest in zip(shards["shard"], shards["sha256"], strict=True):
        path = reader.paths.shard_file(int(shard))
        if not path.exists():
            problems.append(f"shard {shard}: file {path} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"shard {shard}: checksum of {path} differs from the shards table")
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
