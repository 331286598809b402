"""The corpus format contract: what the writer puts on disk is what ``corpus_format`` declares, and every
reader (pipeline reader, xarray, the training dataset, the shard reader) reads the same patches from it."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr

from conftest import as_format_1
from spectral_corpus.corpus_format import (
    FORMAT_VERSION,
    GEO_TABLES,
    SCHEMAS,
    TABLES,
    CorpusLayout,
    FormatError,
    Manifest,
)
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.verify import verify_corpus
from spectral_corpus.pipeline.xarray_view import open_patches
from spectral_corpus.training.dataset import CorpusDataset
from spectral_corpus.training.shards import PatchReader
from stac_schemas import offline_validator

#: The official JSON schema of GeoParquet 1.0.0 file metadata (source in tests/data/geoparquet/README.md).
GEOPARQUET_SCHEMA = json.loads((Path(__file__).parent / "data" / "geoparquet" / "schema-1.0.0.json").read_text())


def test_every_table_has_its_declared_schema(corpus: Path) -> None:
    layout = CorpusLayout(corpus)
    for name in TABLES:
        schema = pq.read_schema(layout.table(1, name))
        assert schema.remove_metadata() == SCHEMAS[name], name


def test_geo_tables_are_geoparquet_in_wgs84(corpus: Path) -> None:
    layout = CorpusLayout(corpus)
    for name in GEO_TABLES:
        path = layout.table(1, name)
        geo = json.loads(pq.read_schema(path).metadata[b"geo"])
        assert geo["version"] == "1.0.0" and geo["primary_column"] == "geometry"
        assert geo["columns"]["geometry"]["encoding"] == "WKB"
        assert geo["columns"]["geometry"]["geometry_types"] == ["Polygon"]
        offline_validator(GEOPARQUET_SCHEMA).validate(geo)  # the official GeoParquet 1.0.0 schema
        frame = gpd.read_parquet(path)
        assert frame.crs.to_epsg() == 4326
        assert np.allclose(geo["columns"]["geometry"]["bbox"], frame.total_bounds)


def test_the_manifest_document_is_the_typed_manifest(corpus: Path) -> None:
    layout = CorpusLayout(corpus)
    document = json.loads(layout.manifest(1).read_text())
    manifest = Manifest.from_json(document, "test")
    assert manifest.to_json() == document
    reader = CorpusReader(corpus)
    assert manifest == reader.manifest
    assert manifest.n_obs == len(reader.table("observations")) and manifest.format_version == FORMAT_VERSION
    assert set(manifest.tables) == set(TABLES)


def test_every_file_of_a_corpus_lies_where_the_layout_says(corpus: Path) -> None:
    layout = CorpusLayout(corpus)
    reader = CorpusReader(corpus)
    named = {layout.current, layout.metadata, layout.manifest(1)}
    named |= {layout.table(1, name) for name in TABLES}
    named |= {layout.shard_file(int(shard)) for shard in reader.table("shards")["shard"]}
    files = {p for p in corpus.rglob("*") if p.is_file() and p.name != ".writer.lock"}
    in_zarr_metadata = {p for p in files if p.is_relative_to(layout.zarr) and p.name == "zarr.json"}
    coordinates = {p for p in files if p.is_relative_to(layout.zarr) and not p.is_relative_to(layout.patch_array)}
    assert files - in_zarr_metadata - coordinates == named


def test_every_reader_reads_the_same_patch(corpus: Path) -> None:
    reader = CorpusReader(corpus)
    observations = reader.table("observations")
    dataset = CorpusDataset(corpus, split=None, unit="observation", normalize=False)
    patches = PatchReader(CorpusLayout(corpus).patch_array)
    store = xr.open_zarr(CorpusLayout(corpus).zarr, consolidated=True)
    view = open_patches(corpus)
    for item, obs in enumerate(dataset._obs):  # the dataset's own order: location, then date
        expected = reader.read_patch(int(obs))
        assert (expected != -32768).any()
        assert np.array_equal(patches.read(int(obs)), expected)
        assert np.array_equal(store["patches"][int(obs)].to_numpy(), expected)
        assert np.array_equal(view["patches"].sel(obs=int(obs)).to_numpy(), expected)
        assert np.array_equal(dataset[item]["image"].numpy(), expected.astype(np.float32))
        row = observations.set_index("obs").loc[int(obs)]
        assert int(store["location_id"][int(obs)]) == row["location_id"] == int(dataset[item]["location_id"])
    assert len(dataset) == len(observations)


def test_a_corpus_of_format_1_is_read(corpus: Path, tmp_path: Path) -> None:
    shutil.copytree(corpus, tmp_path / "v1", copy_function=os.link)
    old = CorpusReader(as_format_1(tmp_path / "v1"))
    assert old.manifest.format_version == 1
    scenes, expected = old.table("scenes"), CorpusReader(corpus).table("scenes")
    assert list(scenes["assets"]) == list(expected["assets"])
    images = [dict(assets)["image"] for assets in scenes.loc[scenes["status"] == "ok", "assets"]]
    assert images and all(re.search(r"-SPECTRAL_IMAGE(_COG)?\.TIF$", image) for image in images), images
    dataset = CorpusDataset(old.paths.root, split=None, unit="observation", normalize=False)
    assert np.array_equal(dataset[0]["image"].numpy(), old.read_patch(int(dataset._obs[0])).astype(np.float32))


def test_a_corpus_of_an_unknown_format_version_is_refused(corpus: Path, tmp_path: Path) -> None:
    for found, expected in (
        (0, "was written in format version 0, which this software no longer reads (oldest readable: 1); rebuild"),
        (FORMAT_VERSION + 1, f"was written in format version {FORMAT_VERSION + 1}; this software reads versions 1 to"),
    ):
        copy = tmp_path / f"format-{found}"
        shutil.copytree(corpus, copy, copy_function=os.link)
        metadata = CorpusLayout(copy).metadata
        values = json.loads(metadata.read_text())
        metadata.unlink()
        metadata.write_text(json.dumps({**values, "format_version": found}))
        for open_corpus in (CorpusReader, CorpusDataset):
            with pytest.raises(FormatError, match=re.escape(f"{copy} {expected}")):
                open_corpus(copy)


def test_a_path_that_is_not_a_corpus_is_named(tmp_path: Path) -> None:
    for open_corpus in (CorpusReader, CorpusDataset):
        with pytest.raises(FormatError, match=re.escape(f"{tmp_path} is not a corpus: corpus.json is missing")):
            open_corpus(tmp_path)


def test_the_earliest_format_1_versions_without_moments_and_retired_are_read(corpus: Path, tmp_path: Path) -> None:
    shutil.copytree(corpus, tmp_path / "v1", copy_function=os.link)
    layout = CorpusLayout(as_format_1(tmp_path / "v1"))
    manifest = json.loads(layout.manifest(1).read_text())
    for name in ("moments", "retired"):
        layout.table(1, name).unlink()
        del manifest["tables"][name]
    layout.manifest(1).unlink()
    layout.manifest(1).write_text(json.dumps(manifest))
    reader = CorpusReader(layout.root)
    assert reader.table("retired").columns.tolist() == SCHEMAS["retired"].names and reader.table("retired").empty
    assert reader.table("moments").empty
    assert verify_corpus(reader) == []
