"""Import a tree in the SpectralEarth layout (the published dataset, or an ``export-spectralearth``) into a corpus.

The layout and what its files carry are in ``pipeline.spectralearth_layout``. What each part of the
corpus comes from:

- locations: the folder names (``location_id``) and the files' CRS and transform. A patch on the corpus
  grid (``stages.grid``) lies in its cell; a location's cell is the one under the centre of its first
  patch (lowest scene id), and every observation keeps its own patch centre (``x``, ``y``), so patches
  off the grid keep their exact georeferencing (nothing is resampled, and the export writes them back
  where they were);
- scenes: the file names (``scene_id``); product and acquisition time from the files' tags or an
  index table (``--index``, or ``SRC/index.parquet`` when there is one), and what a product name
  gives (datatake, tile, processor version, times). A value that neither carries stays unknown
  (null): nothing is invented;
- splits: the files' or the index's; locations without one get a split from the rules' spatial
  blocks (``stages.splits``);
- observations: location-major in spatial blocks as a build orders them, or in the index's ``obs``
  order when it gives one for every file (an exported corpus comes back in its own order); shards of
  ``rules.shard_size``, written by one Dask task each; band statistics pooled from per-shard moments
  of the training split, as a build does.

The candidates and retired tables are empty (no product was inspected, nothing was retired). The
result is version 1 of a new corpus, published in one step like a build.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import rasterio
import shapely
from distributed import Client
from pyproj import Transformer
from rasterio.errors import RasterioError

from spectral_corpus.catalog.bands import band_table, selected_bands
from spectral_corpus.catalog.product import ProductName
from spectral_corpus.catalog.scenes import OK
from spectral_corpus.corpus_files import CorpusFiles, corpus_files
from spectral_corpus.corpus_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SCHEMAS,
    CorpusMetadata,
)
from spectral_corpus.errors import SpectralCorpusError
from spectral_corpus.pipeline.build import band_statistics, dask_client, run_tasks, write_coordinates
from spectral_corpus.pipeline.errors import PipelineError
from spectral_corpus.pipeline.lock import writer_lock
from spectral_corpus.pipeline.outcomes import Published
from spectral_corpus.pipeline.progress import Progress, log
from spectral_corpus.pipeline.spectralearth_layout import (
    FRACTION_TAGS,
    HALF_PATCH_M,
    INDEX_FIELDS,
    INDEX_FILE,
    SENSOR_DIR,
    parse_patch_path,
    read_band,
    read_observation_tags,
)
from spectral_corpus.stages.commit import VersionTables, commit_version, read_current
from spectral_corpus.stages.grid import ANCHOR_M, CELL_M, PATCH_PX, cell_origin, cell_polygon_xy, check_lattice
from spectral_corpus.stages.materialize import ShardResult, write_shard
from spectral_corpus.stages.rules import Rules
from spectral_corpus.stages.splits import SPLITS, assign_splits
from spectral_corpus.stages.stats import moments_key, moments_of
from spectral_corpus.stages.store import create_patch_array

#: Files whose headers one Dask task reads.
HEADER_BATCH = 256


class SpectralEarthImportError(PipelineError, ValueError):
    """The source is not a SpectralEarth tree this software reads; the message names the file and the problem."""


@dataclass(frozen=True)
class ImportOptions:
    """What an import reads and writes."""

    #: The dataset root (holding ``enmap/``) or the ``enmap`` folder itself.
    source: Path
    #: The new corpus: a local folder or an object-store URL.
    out: str | Path
    #: An index table (Parquet or CSV); None: ``SOURCE/index.parquet`` when present.
    index: Path | None = None
    #: ``shard_size`` and the split settings (for locations the source gives no split) are used.
    rules: Rules = field(default_factory=Rules)
    workers: int = 2
    scheduler: str | None = None
    progress: Progress | None = None


def import_spectralearth(options: ImportOptions) -> Published:
    """Read the tree into a new corpus and publish its version 1."""
    root = dataset_root(options.source)
    paths = list_patches(root)
    index_path = options.index or (root / INDEX_FILE if (root / INDEX_FILE).is_file() else None)
    index = read_index(index_path) if index_path is not None else None
    log.info(f"source      {len(paths)} files in {root / SENSOR_DIR}" + (f", index {index_path}" if index_path else ""))
    with writer_lock(options.out) as lease:
        files = corpus_files(options.out)
        published = read_current(files)
        if published is not None:
            raise SpectralEarthImportError(
                f"{options.out} already holds a corpus (version {published}); import into a new folder"
            )
        with dask_client(options.workers, options.scheduler) as client:
            header_tasks = [
                (f"headers-{n}", read_headers, (root, paths[i : i + HEADER_BATCH]))
                for n, i in enumerate(range(0, len(paths), HEADER_BATCH))
            ]
            headers = pd.DataFrame(
                [r for rows in run_tasks(client, header_tasks, "headers", options.progress) for r in rows]
            )
            bands = band_columns(root / paths[0], headers)
            rules = replace(options.rules, bands=len(bands["band"]))
            observations = plan_observations(merge_index(headers, index), rules)
            locations = location_table(observations, rules)
            observations["split"] = observations["location_id"].map(locations.set_index("location_id")["split"])
            log.info(f"plan        {len(observations)} observations at {len(locations)} locations")
            shards, moments = _write_shards(client, files, root, observations, bands, rules, options.progress)
        observations = observations[SCHEMAS["observations"].names]
        write_coordinates(files, observations)
        tables = VersionTables(
            scenes=scene_table(observations, str(root)),
            locations=locations,
            observations=observations,
            candidates=_empty("candidates"),
            shards=shards,
            moments=moments,
            retired=_empty("retired"),
        )
        software = package_version("spectral-corpus")
        metadata = CorpusMetadata(FORMAT_NAME, FORMAT_VERSION, software, str(root), {}, rules.as_dict(), bands)
        run = {
            "command": "import-spectralearth",
            "source": str(root),
            "index": str(index_path) if index_path else None,
            "known": {c: int(observations[c].notna().sum()) for c in ("product", "acquired", "row")},
            "split_from_source": int(locations["split_from_source"].sum()),
            "software_version": software,
        }
        stats = band_statistics(moments, len(bands["band"]))
        lease.confirm()
        manifest = commit_version(files, 1, tables, metadata, stats, run)
    log.info(f"commit      version {manifest.version} published")
    return Published(manifest)


def _write_shards(
    client: Client,
    files: CorpusFiles,
    root: Path,
    observations: pd.DataFrame,
    bands: dict[str, list[Any]],
    rules: Rules,
    progress: Progress | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Create the patch array and write every shard, one task each: the shards and moments tables."""
    n_bands = len(bands["band"])
    centres, fwhm, numbers = (np.asarray(bands[c]) for c in ("center_nm", "fwhm_nm", "band"))
    create_patch_array(files, len(observations), centres, fwhm, numbers, rules.shard_size)
    rows = observations.assign(file=[str(root / p) for p in observations["path"]])[["obs", "shard", "file", "split"]]
    tasks = [(f"import-{int(s)}", import_shard, (files, int(s), shard, n_bands)) for s, shard in rows.groupby("shard")]
    written = run_tasks(client, tasks, "import", progress)
    shards = pd.DataFrame([w["shard"] for w in written], columns=list(ShardResult.__dataclass_fields__))
    moments = pd.DataFrame([w["moments"] for w in written if w["moments"]], columns=SCHEMAS["moments"].names)
    return shards, moments


# --- the source tree ------------------------------------------------------------------------------


def dataset_root(source: Path) -> Path:
    """The folder holding ``enmap/`` (``source`` itself, or its parent when ``source`` is ``enmap``)."""
    if (source / SENSOR_DIR).is_dir():
        return source
    if source.name == SENSOR_DIR and source.is_dir():
        return source.parent
    raise SpectralEarthImportError(
        f"{source} has no {SENSOR_DIR}/ folder: a SpectralEarth tree is {SENSOR_DIR}/<location>/<scene>.tif under it"
    )


def list_patches(root: Path) -> list[str]:
    """Every ``enmap/<location>/<scene>.tif`` under ``root`` (as the SpectralEarth loader takes them: folders
    of ``*.tif``; other files are ignored), relative, sorted."""
    found = []
    for folder in sorted(p for p in (root / SENSOR_DIR).iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix != ".tif":
                continue
            relative = f"{folder.name}/{path.name}"
            if parse_patch_path(relative) is None:
                raise SpectralEarthImportError(
                    f"{path}: a patch is <location id>/<scene id>.tif with numbers for both (as 0000823/04138.tif)"
                )
            found.append(f"{SENSOR_DIR}/{relative}")
    if not found:
        raise SpectralEarthImportError(f"{root / SENSOR_DIR} holds no <location>/<scene>.tif files")
    return found


def read_headers(root: Path, paths: list[str]) -> list[dict[str, Any]]:
    """Dask task: what each file's header and tags say (no pixels are read)."""
    rows = []
    for path in paths:
        source = root / path
        named = parse_patch_path(path.removeprefix(f"{SENSOR_DIR}/"))
        if named is None:
            raise SpectralEarthImportError(f"{source}: not a <location id>/<scene id>.tif file")
        location_id, scene_id = named
        try:
            with rasterio.open(source) as image:
                epsg = check_lattice(image.transform, image.crs, str(source))
                shape, count, dtype = (image.height, image.width), image.count, image.dtypes[0]
                origin = (image.transform.c, image.transform.f)
                fields = read_observation_tags(image.tags())
        except RasterioError as error:
            raise SpectralEarthImportError(f"{source}: cannot be read ({error})") from None
        except (SpectralCorpusError, ValueError) as error:
            raise SpectralEarthImportError(f"{source}: {error}") from None
        if shape != (PATCH_PX, PATCH_PX):
            raise SpectralEarthImportError(f"{source}: {shape[0]} x {shape[1]} px; a patch is {PATCH_PX} x {PATCH_PX}")
        ids = {"location_id": location_id, "scene_id": scene_id}
        for column, value in ids.items():
            if fields.get(column, value) != value:
                raise SpectralEarthImportError(f"{source}: its tags give {column} {fields[column]}, its name {value}")
        rows.append({**fields, **ids, "path": path, "epsg": epsg, "count": count, "dtype": dtype, "origin": origin})
    return rows


def band_columns(path: Path, headers: pd.DataFrame) -> dict[str, list[Any]]:
    """The corpus band table (``corpus.json``'s ``bands``) from the first file's band descriptions and
    tags; EnMAP's nominal table where they say nothing (SpectralEarth's 202 bands, or all 224)."""
    counts = headers["count"].unique()
    if len(counts) > 1:
        raise SpectralEarthImportError(f"the files hold different band counts: {sorted(int(c) for c in counts)}")
    with rasterio.open(path) as image:
        described = [read_band(image.descriptions[i], image.tags(i + 1)) for i in range(image.count)]
    try:
        nominal = selected_bands(len(described))
    except ValueError:
        raise SpectralEarthImportError(f"{path}: {len(described)} bands; an EnMAP corpus has 202 or 224") from None
    numbers = [d[0] for d in described if d[0] is not None]
    if len(numbers) != len(described) or sorted(set(numbers)) != list(nominal):  # not EnMAP's band numbers
        numbers = [int(b) for b in nominal]
    table = band_table().set_index("band").loc[numbers]
    centres = [d[1] if d[1] is not None else float(c) for d, c in zip(described, table["center_nm"], strict=True)]
    fwhm = [d[2] if d[2] is not None else float(f) for d, f in zip(described, table["fwhm_nm"], strict=True)]
    return {"band": numbers, "center_nm": centres, "fwhm_nm": fwhm, "kept_202": [bool(k) for k in table["kept_202"]]}


# --- the index table ------------------------------------------------------------------------------


def read_index(path: Path) -> pd.DataFrame:
    """An index table: our ``index.parquet``, or any Parquet or CSV file naming files by ``path`` (as
    ``enmap/0000823/04138.tif``), by ``location_id`` and ``scene_id``, or scenes by ``scene_id`` alone;
    with any of the columns ``INDEX_FIELDS``."""
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pq.read_table(path).to_pandas()
    except (OSError, ValueError) as error:
        raise SpectralEarthImportError(f"index {path} cannot be read: {error}") from None
    if "path" in frame.columns:
        keys = [parse_patch_path(str(p).removeprefix(f"{SENSOR_DIR}/")) for p in frame["path"]]
        if None in keys:
            raise SpectralEarthImportError(f"index {path}: a path is not {SENSOR_DIR}/<location>/<scene>.tif")
        frame["location_id"] = [k[0] for k in keys if k is not None]
        frame["scene_id"] = [k[1] for k in keys if k is not None]
    if "scene_id" not in frame.columns:
        raise SpectralEarthImportError(f"index {path} names no files: it needs path, or location_id and scene_id")
    key = ["location_id", "scene_id"] if "location_id" in frame.columns else ["scene_id"]
    if frame.duplicated(key).any():
        raise SpectralEarthImportError(f"index {path} lists a {' and '.join(key)} twice")
    frame = frame[[*key, *(c for c in INDEX_FIELDS if c in frame.columns)]]
    if "acquired" in frame.columns:
        frame["acquired"] = pd.to_datetime(frame["acquired"], utc=True)
    return frame


def merge_index(headers: pd.DataFrame, index: pd.DataFrame | None) -> pd.DataFrame:
    """The files' fields completed by the index: a value the tags give stays; one they do not give is
    taken from the index; the two disagreeing is an error."""
    table = _typed(headers)
    if index is None:
        return table
    key = [c for c in ("location_id", "scene_id") if c in index.columns]
    merged = table[key].merge(index, on=key, how="left")
    for column in INDEX_FIELDS:
        if column not in index.columns:
            continue
        ours, theirs = table[column], merged[column].set_axis(table.index).astype(table[column].dtype)
        both = ours.notna() & theirs.notna()
        for position in both[both].index:
            if ours[position] != theirs[position]:
                raise SpectralEarthImportError(
                    f"{table.at[position, 'path']}: its tags give {column} {ours[position]!r}, "
                    f"the index {theirs[position]!r}"
                )
        table[column] = ours.where(ours.notna(), theirs)
    return table


def _typed(headers: pd.DataFrame) -> pd.DataFrame:
    """Header rows with every field the files may carry, in its type; what they do not carry is null."""
    table = headers.copy()

    def column(name: str, missing: Any = None) -> pd.Series:
        return table[name] if name in table else pd.Series(missing, index=table.index, dtype=object)

    for name in ("product", "split"):
        table[name] = column(name).astype(object).where(column(name).notna(), None)
    for name in ("obs", "row", "col"):
        table[name] = column(name, pd.NA).astype("Int64")
    for name in FRACTION_TAGS:
        table[name] = column(name, np.nan).astype("float32")
    table["acquired"] = pd.to_datetime(column("acquired", pd.NaT), utc=True).astype("datetime64[us, UTC]")
    return table


# --- observations, locations, scenes (pure) -------------------------------------------------------


def plan_observations(table: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Observations with their cell, centre, order, shard and slot (splits as the source gives them)."""
    bad = table.loc[table["split"].notna() & ~table["split"].isin(SPLITS), ["path", "split"]]
    if len(bad):
        raise SpectralEarthImportError(f"{bad.iloc[0]['path']}: split {bad.iloc[0]['split']!r} is not one of {SPLITS}")
    table = _fill_from_products(table)
    table["x"] = [origin[0] + HALF_PATCH_M for origin in table["origin"]]
    table["y"] = [origin[1] - HALF_PATCH_M for origin in table["origin"]]
    table["ix"] = np.floor((table["x"] - ANCHOR_M) / CELL_M).astype("int64")
    table["iy"] = np.floor((table["y"] - ANCHOR_M) / CELL_M).astype("int64")
    first = table.sort_values(["location_id", "scene_id"]).drop_duplicates("location_id").set_index("location_id")
    zones = table.groupby("location_id")["epsg"].nunique()
    if (zones > 1).any():
        raise SpectralEarthImportError(f"location {zones[zones > 1].index[0]} has patches in more than one UTM zone")
    for column in ("ix", "iy"):  # a location lies in the cell of its first patch
        table[column] = table["location_id"].map(first[column])
    table = _ordered(table, rules.block_cells)
    table["obs"] = np.arange(len(table), dtype=np.int64)
    table["shard"] = table["obs"] // rules.shard_size
    table["slot"] = table["obs"] % rules.shard_size
    return table


def _fill_from_products(table: pd.DataFrame) -> pd.DataFrame:
    """A scene's product and time known from one of its files hold for all of them; a product name
    gives the acquisition time where nothing else does."""
    for column in ("product", "acquired"):
        known = table.dropna(subset=[column]).groupby("scene_id")[column]
        several = known.nunique()
        if (several > 1).any():
            scene = several[several > 1].index[0]
            raise SpectralEarthImportError(f"scene {scene}: its files give different values of {column}")
        missing = table[column].isna() & table["scene_id"].isin(several.index)
        if missing.any():
            table.loc[missing, column] = table.loc[missing, "scene_id"].map(known.first())
    missing = table["acquired"].isna() & table["product"].notna()
    if missing.any():
        names = [_parsed(p) for p in table.loc[missing, "product"]]
        table.loc[missing, "acquired"] = [pd.Timestamp(n.acquired) if n else pd.NaT for n in names]
    return table


def _ordered(table: pd.DataFrame, block: int) -> pd.DataFrame:
    """The index's order when it numbers every file; else location-major in spatial blocks, by date
    (as ``stages.plan`` orders a build)."""
    if table["obs"].notna().all() and not table["obs"].duplicated().any():
        return table.sort_values("obs").reset_index(drop=True)
    keys = table.assign(_by=-(table["iy"] // block), _bx=table["ix"] // block, _iy=-table["iy"])
    order = ["epsg", "_by", "_bx", "_iy", "ix", "location_id", "acquired", "scene_id"]
    keys = keys.sort_values(order, na_position="last")
    return keys.drop(columns=["_by", "_bx", "_iy"]).reset_index(drop=True)


def location_table(observations: pd.DataFrame, rules: Rules) -> gpd.GeoDataFrame:
    """One row per location: its cell, split (the source's, else by the rules' blocks), centre (its
    first patch's), footprint (that patch's outline, in lon/lat) and number of observations.
    ``split_from_source`` says where its split came from (dropped when the table is written)."""
    splits = observations.dropna(subset=["split"]).groupby("location_id")["split"]
    several = splits.nunique()
    if (several > 1).any():
        raise SpectralEarthImportError(f"location {several[several > 1].index[0]}: its files give different splits")
    first = observations.sort_values(["location_id", "scene_id"]).drop_duplicates("location_id")
    table = first[["epsg", "ix", "iy", "location_id", "x", "y", "origin"]].reset_index(drop=True)
    table["split"] = table["location_id"].map(splits.first())
    table["split_from_source"] = table["split"].notna()
    drawn = assign_splits(table, rules.split_block_cells, rules.val_fraction, rules.test_fraction, rules.split_seed)
    table["split"] = table["split"].where(table["split_from_source"], drawn)
    table["n_obs"] = table["location_id"].map(observations["location_id"].value_counts()).astype("int64")
    shared = table.duplicated(["epsg", "ix", "iy"], keep=False)
    if shared.any():  # only patches off the corpus grid can do this
        log.warning(f"import      {int(shared.sum())} locations share their grid cell with another; each keeps its id")
    located = gpd.GeoDataFrame(table.drop(columns="origin"), geometry=_footprints(table), crs="EPSG:4326")
    return located[[*SCHEMAS["locations"].names, "split_from_source"]]


def _footprints(locations: pd.DataFrame) -> list[shapely.Polygon]:
    """Each location's patch outline in lon/lat, densified as a cell's (``stages.plan.cell_footprints``)."""
    polygons: list[shapely.Polygon] = [shapely.Polygon()] * len(locations)
    for epsg, group in locations.groupby("epsg", sort=False):
        to_lonlat = Transformer.from_crs(int(epsg), 4326, always_xy=True)
        for position, ix, iy, origin in zip(group.index, group["ix"], group["iy"], group["origin"], strict=True):
            cell_x, cell_y = cell_origin(int(ix), int(iy))
            ring = cell_polygon_xy(int(ix), int(iy)) + np.array([origin[0] - cell_x, origin[1] - cell_y])
            lon, lat = to_lonlat.transform(ring[:, 0], ring[:, 1])
            polygons[position] = shapely.Polygon(np.column_stack([lon, lat]))
    return polygons


def scene_table(observations: pd.DataFrame, source: str) -> gpd.GeoDataFrame:
    """One row per scene id: what its files (or the index) and its product name say; everything else
    (covers, band characterisation, assets, swath) unknown."""
    groups = observations.groupby("scene_id")
    scenes = pd.DataFrame({"scene_id": sorted(observations["scene_id"].unique())})
    scenes["product"] = scenes["scene_id"].map(groups["product"].first()).where(lambda s: s.notna(), None)
    scenes["acquired"] = scenes["scene_id"].map(groups["acquired"].first())
    zones = groups["epsg"].agg(lambda e: int(e.iloc[0]) if e.nunique() == 1 else None)
    scenes["epsg"] = scenes["scene_id"].map(zones).astype("Int64")
    names = [_parsed(p) for p in scenes["product"]]
    for column in ("datatake", "tile", "version", "processed"):
        scenes[column] = [getattr(n, column) if n else None for n in names]
    scenes["described_by"] = ""
    scenes["assets"] = [()] * len(scenes)
    scenes["source"] = source
    scenes["status"] = OK
    scenes["reason"] = ""
    scenes["n_candidates"] = 0
    scenes["n_observations"] = scenes["scene_id"].map(groups.size()).astype("int64")
    for name in SCHEMAS["scenes"].names:
        if name not in scenes and name != "geometry":
            scenes[name] = None
    frame = scenes[[n for n in SCHEMAS["scenes"].names if n != "geometry"]]
    return gpd.GeoDataFrame(frame, geometry=[None] * len(frame), crs="EPSG:4326")


def _parsed(product: object) -> ProductName | None:
    if not isinstance(product, str):
        return None
    try:
        return ProductName.parse(product)
    except SpectralCorpusError:
        return None


def _empty(name: str) -> pd.DataFrame:
    frame: pd.DataFrame = SCHEMAS[name].empty_table().to_pandas()
    return frame


# --- shards ---------------------------------------------------------------------------------------


def import_shard(files: CorpusFiles, shard: int, rows: pd.DataFrame, n_bands: int) -> dict[str, Any]:
    """Dask task: read one shard's files (``rows``: ``obs``, ``file``, ``split``), write the shard whole,
    return its ShardResult fields and the band moments of its training patches."""
    started = time.perf_counter()
    rows = rows.sort_values("obs")
    patches = np.stack([read_patch(Path(path), n_bands) for path in rows["file"]])
    first = int(rows["obs"].iloc[0])
    result = write_shard(files, shard, first, patches, read_seconds=time.perf_counter() - started)
    train = (rows["split"] == "train").to_numpy()
    moments = None
    if train.any():
        m = moments_of(patches[train], n_bands)
        key = moments_key(rows.loc[train, "obs"].tolist())
        moments = {"shard": shard, "key": key, "count": m.count, "mean": m.mean, "m2": m.m2}
    return {"shard": asdict(result), "moments": moments}


def read_patch(path: Path, n_bands: int) -> np.ndarray:
    """A file's pixels as int16 counts; other integer types only where every value fits."""
    try:
        with rasterio.open(path) as image:
            pixels = image.read()
    except RasterioError as error:
        raise SpectralEarthImportError(f"{path}: pixels cannot be read ({error})") from None
    if pixels.shape != (n_bands, PATCH_PX, PATCH_PX):
        raise SpectralEarthImportError(f"{path}: shape {pixels.shape}, expected {(n_bands, PATCH_PX, PATCH_PX)}")
    counts = pixels.astype(np.int16)
    if pixels.dtype != np.int16 and not (np.issubdtype(pixels.dtype, np.integer) and np.array_equal(counts, pixels)):
        raise SpectralEarthImportError(f"{path}: {pixels.dtype} values that are not int16 counts")
    return counts
