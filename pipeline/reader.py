"""Open a published corpus version through its public format (``spectral_corpus.corpus_format``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from spectral_corpus.corpus_files import LocalFiles, corpus_files
from spectral_corpus.corpus_format import (
    PATCH_ARRAY,
    SCHEMAS,
    CorpusLayout,
    FormatError,
    current_version,
    read_manifest,
    read_metadata,
    read_table,
    table_key,
)


class CorpusReader:
    """One version of a corpus: its manifest, metadata, tables and patch array (opened lazily).

    ``root`` is a local path or an object-store URL (``s3://bucket/prefix``; see ``corpus_files``).
    """

    def __init__(self, root: Path | str, version: int | None = None) -> None:
        self.files = corpus_files(root)
        self.metadata = read_metadata(self.files)
        self.version = version if version is not None else current_version(self.files)
        self.manifest = read_manifest(self.files, self.version)

    @property
    def paths(self) -> CorpusLayout:
        """The corpus's local paths (what writers use); FormatError for a corpus in an object store."""
        if not isinstance(self.files, LocalFiles):
            raise FormatError(f"{self.files.root}: writing to a corpus in an object store is not supported yet")
        return CorpusLayout(self.files.path)

    @property
    def rules(self) -> dict[str, Any]:
        """The rules this version was made with (``corpus.json``'s for the earliest manifests)."""
        return self.manifest.rules or self.metadata.rules

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A table of this version (see ``corpus_format.SCHEMAS``); scenes and locations as GeoDataFrames."""
        if name not in self.manifest.tables:  # the earliest format-1 versions had no moments or retired table
            return SCHEMAS[name].empty_table().to_pandas()[columns or slice(None)]
        key = table_key(self.version, name)
        frame: pd.DataFrame = read_table(self.files, key, name, self.manifest.format_version, columns)
        return frame

    @cached_property
    def patches(self) -> zarr.Array:
        """The patch array (obs, band, y, x); only rows listed in ``observations`` belong to this version."""
        return zarr.open_array(self.files.zarr_store(), path=PATCH_ARRAY, mode="r")

    def read_patch(self, obs: int) -> np.ndarray:
        """The int16 patch (band, y, x) of observation ``obs``."""
        return np.asarray(self.patches[obs])


def list_versions(root: Path | str) -> list[dict[str, Any]]:
    """Every published version's manifest figures, oldest first (unpublished leftovers are skipped)."""
    files = corpus_files(root)
    read_metadata(files)
    current = current_version(files)
    rows = []
    for version in range(1, current + 1):
        manifest = read_manifest(files, version)
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
