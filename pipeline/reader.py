"""Open a published corpus version through its public format (``spectral_corpus.corpus_format``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from spectral_corpus.corpus_format import (
    PATCHES,
    CorpusLayout,
    current_version,
    read_manifest,
    read_metadata,
    read_table,
)


class CorpusReader:
    """One version of a corpus: its manifest, metadata, tables and patch array (opened lazily)."""

    def __init__(self, root: Path | str, version: int | None = None) -> None:
        self.paths = CorpusLayout(Path(root))
        self.metadata = read_metadata(self.paths)
        self.version = version if version is not None else current_version(self.paths)
        self.manifest = read_manifest(self.paths, self.version)

    @property
    def rules(self) -> dict[str, Any]:
        """The rules this version was made with (``corpus.json``'s for the earliest manifests)."""
        return self.manifest.rules or self.metadata.rules

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A table of this version (see ``corpus_format.SCHEMAS``); scenes and locations as GeoDataFrames."""
        frame: pd.DataFrame = read_table(
            self.paths.table(self.version, name), name, self.manifest.format_version, columns
        )
        return frame

    @cached_property
    def patches(self) -> zarr.Array:
        """The patch array (obs, band, y, x); only rows listed in ``observations`` belong to this version."""
        return zarr.open_array(self.paths.zarr, path=PATCHES, mode="r")

    def read_patch(self, obs: int) -> np.ndarray:
        """The int16 patch (band, y, x) of observation ``obs``."""
        return np.asarray(self.patches[obs])


def list_versions(root: Path | str) -> list[dict[str, Any]]:
    """Every published version's manifest figures, oldest first (unpublished leftovers are skipped)."""
    paths = CorpusLayout(Path(root))
    read_metadata(paths)
    current = current_version(paths)
    rows = []
    for version in range(1, current + 1):
        manifest = read_manifest(paths, version)
        rows.append(
            {
                "version": version,
                "created": manifest.created,
                "observations": manifest.n_obs,
                "locations": manifest.n_locations,
                "shards": manifest.n_shards,
                "retired": manifest.n_retired,
                "source": manifest.run.get("source"),
                "current": version == current,
            }
        )
    return rows
