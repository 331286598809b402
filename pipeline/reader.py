"""Open a published corpus version through its public format (manifest, tables, Zarr store)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import zarr

from spectral_corpus.stages.store import FORMAT_NAME, FORMAT_VERSION, PATCHES, CorpusPaths


class CorpusError(ValueError):
    """A path is not a readable corpus, or a version does not exist."""


class CorpusReader:
    """One version of a corpus: its manifest, metadata, tables and patch array (opened lazily)."""

    def __init__(self, root: Path | str, version: int | None = None) -> None:
        self.paths = CorpusPaths(Path(root))
        self.metadata = _read_metadata(self.paths)
        self.version = version if version is not None else _current_version(self.paths)
        manifest = self.paths.version_dir(self.version) / "manifest.json"
        if not manifest.exists():
            raise CorpusError(f"{self.paths.root}: version {self.version} does not exist")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())

    @property
    def rules(self) -> dict[str, Any]:
        """The rules this version was made with (its manifest's; ``corpus.json`` for older manifests)."""
        rules: dict[str, Any] = self.manifest.get("rules", self.metadata["rules"])
        return rules

    def table(self, name: str) -> pd.DataFrame:
        """A table of this version (``scenes``, ``locations``, ``observations``, ``candidates``, ``shards``)."""
        path = self.paths.version_dir(self.version) / f"{name}.parquet"
        if name in ("scenes", "locations"):
            return gpd.read_parquet(path)
        return pd.read_parquet(path)

    @cached_property
    def patches(self) -> zarr.Array:
        """The patch array (obs, band, y, x); only rows listed in ``observations`` belong to this version."""
        return zarr.open_array(self.paths.zarr, path=PATCHES, mode="r")

    def read_patch(self, obs: int) -> np.ndarray:
        """The int16 patch (band, y, x) of observation ``obs``."""
        return np.asarray(self.patches[obs])


def list_versions(root: Path | str) -> list[dict[str, Any]]:
    """Every published version's manifest figures, oldest first (unpublished leftovers are skipped)."""
    paths = CorpusPaths(Path(root))
    _read_metadata(paths)
    current = _current_version(paths)
    rows = []
    for version in range(1, current + 1):
        manifest = json.loads((paths.version_dir(version) / "manifest.json").read_text())
        run = manifest.get("run", {})
        rows.append(
            {
                "version": version,
                "created": manifest["created"],
                "observations": manifest["n_obs"],
                "locations": manifest["n_locations"],
                "shards": manifest["n_shards"],
                "retired": manifest.get("n_retired", 0),
                "source": run.get("source"),
                "current": version == current,
            }
        )
    return rows


def _read_metadata(paths: CorpusPaths) -> dict[str, Any]:
    if not paths.metadata.exists():
        raise CorpusError(f"{paths.root} is not a corpus: {paths.metadata.name} is missing")
    metadata: dict[str, Any] = json.loads(paths.metadata.read_text())
    if metadata.get("format") != FORMAT_NAME:
        raise CorpusError(f"{paths.root} is not a {FORMAT_NAME} corpus (format {metadata.get('format')!r})")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise CorpusError(
            f"{paths.root} was written in format version {metadata['format_version']}; this software reads "
            f"up to {FORMAT_VERSION}: upgrade spectral-corpus"
        )
    return metadata


def _current_version(paths: CorpusPaths) -> int:
    if not paths.current.exists():
        raise CorpusError(f"{paths.root}: no published version (CURRENT is missing)")
    return int(json.loads(paths.current.read_text())["version"])
