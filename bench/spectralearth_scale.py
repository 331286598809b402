"""SpectralEarth scale: what rebuilding SpectralEarth costs, measured on this machine and extrapolated.

Run from the repository root::

    python bench/spectralearth_scale.py [--quick] [--out bench/results/spectralearth_scale.jsonl]
    #   --scenes 11636 --seed 0 --cache DIR --wait-quiet 30

SpectralEarth: 11,636 scenes, about 1,000,000 candidate cells, 538,974 observations at 415,153 locations.
Four parts. Every task, the client's run at each size and the loader's index run in a fresh spawned
process of their own; peak RSS is ``VmHWM``, reset where a task or step starts (``ru_maxrss`` cannot be
reset, and a spawned process's starts at what its parent held when it forked):

1. **Tasks at the real product size.** Three products in DLR's raster layout (band-interleaved,
   uncompressed GeoTIFF strips with the options ``catalog.rasters`` gives DLR's ``GTiff``; quality layers
   through ``catalog.rasters.encode_raster``; METADATA.XML through ``catalog.metadata.metadata_xml``),
   1,200 x 1,200, 1,517 x 1,220 (the shape of the real DLR STAC item in ``shared/data/real``) and
   1,300 x 1,250 px (a revisit overlapping the first), 224 bands, spectra from ``catalog.synth``'s
   landscape, the valid swath a parallelogram inside the raster as in real L2A tiles, clouds, shadows,
   haze and water as blobs. Generated once and cached (never timed). Indexed with
   ``catalog.archive.index_archive``; each scene inspected by ``stages.inspect.inspect_scene``; planned
   with ``pipeline.build._plan`` and default rules; each shard written by
   ``stages.materialize.materialize_shard``. Per task: wall and CPU s, bytes read (``/proc/self/io``
   ``rchar``; ``read_bytes`` is what came from storage, 0 on a warm page cache), peak RSS, and the CPU s
   of the functions inside that matter (wrapped: inspect's truncation check, band reads and cell counts;
   materialize's window reads and band moments).
2. **Plan and commit at SpectralEarth size, without pixels.** A generated world (see ``synthetic_world``:
   datatakes of 1-6 tiles overlapping by one cell row, revisits, scenes astride UTM zone edges, the swath
   parallelogram, clouds) gives a scene table of ``--scenes`` SceneRecords and their candidate table
   (``stages.inspect.CANDIDATE_COLUMNS``). The client's steps of ``pipeline.build._update`` then run on it
   as the pipeline runs them, with no Dask task left to do (each task's output is written beforehand
   exactly as the task writes it: inspections by ``pipeline.work.save_inspection``, shard markers as
   ``materialize_shard`` writes them): the scene table and its work-state round trip, gathering the
   inspections, ``_plan`` (``stages.plan.plan_corpus``), ``_prepare_array``, gathering the shard
   markers, ``_moments`` and ``_commit`` (tables of ``pipeline.tables``, observation coordinates,
   ``stages.commit.commit_version``) into a local corpus whose patch array is never written (Zarr fill
   value). Per step wall and CPU s and the peak RSS above the step's start; functions inside are timed
   by wrapping them. The same at a tenth of the size: the ratio of CPU time per candidate (full / tenth)
   of every step and function shows what grows faster than linearly (1 = linear). Also recorded: what
   ``stages.plan`` makes of a cell astride the antimeridian (``antimeridian_probe``).
3. **The loader's index.** On the committed corpora of 2 (540,000 and 54,000 observations): building
   ``training.CorpusDataset`` (locations, two views; and observations), ``ShardAwareSampler`` for 1 and
   512 ranks, one epoch of its indices, the main process's RSS, and ``len(pickle.dumps(dataset))``,
   what each spawned DataLoader worker gets, with the memory its unpickling allocates (tracemalloc).
4. **Extrapolation** to SpectralEarth on N = 2, 64 and 512 single-threaded workers: core-hours, wall
   time, bytes read and where the time goes (see ``extrapolate`` for the model and its assumptions).

``--quick`` is a smoke check (one 600 x 560 px scene, plan and commit at 1,164 and 116 scenes, about 1
min; give it ``--out`` elsewhere); its figures are not to be quoted. A full run takes about 8 min on the
2-vCPU VM, plus 40 s the first time to write the 2.1 GB of products (cached under ``--cache``). Other
jobs skew every timing: the script records the load averages and the CPU seconds other processes used
during each part. One JSON line per run is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import inspect as pyinspect
import json
import multiprocessing
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import rasterio
import shapely
from build_throughput import DEFAULT_CACHE, machine, machine_cpu, own_cpu
from machine_load import system_load, wait_for_quiet
from pyproj import Transformer
from rasterio.windows import Window

import spectral_corpus.pipeline.build as build_module
from spectral_corpus.catalog import synth as catalog_synth
from spectral_corpus.catalog.archive import index_archive
from spectral_corpus.catalog.bands import N_BANDS, NODATA, REFLECTANCE_SCALE, band_table, selected_bands
from spectral_corpus.catalog.metadata import Bands, ProductMetadata, metadata_xml, projection_name
from spectral_corpus.catalog.product import ASSET_SUFFIXES, ProductName, product_filename
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rasters import encode_raster
from spectral_corpus.catalog.scenes import METADATA_XML, OK, SceneRecord, records_from_table, scene_table
from spectral_corpus.corpus_files import LocalFiles
from spectral_corpus.corpus_format import FLAGS
from spectral_corpus.pipeline import tables as pipeline_tables
from spectral_corpus.pipeline import work as pipeline_work
from spectral_corpus.pipeline.build import BuildOptions
from spectral_corpus.pipeline.work import WorkState, save_inspection
from spectral_corpus.stages import commit as stages_commit
from spectral_corpus.stages import inspect as stages_inspect
from spectral_corpus.stages import materialize as stages_materialize
from spectral_corpus.stages import plan as stages_plan
from spectral_corpus.stages import splits as stages_splits
from spectral_corpus.stages.grid import ANCHOR_M, CELL_M, PATCH_PX, PIXEL_M
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS, InspectResult, inspect_scene
from spectral_corpus.stages.materialize import ShardResult, materialize_shard, shard_marker
from spectral_corpus.stages.rules import Rules
from spectral_corpus.stages.stats import moments_key

MB = 1e6
#: SpectralEarth (DESIGN.md and the issue): scenes, observations, locations, candidate cells.
SPECTRALEARTH = {"scenes": 11_636, "observations": 538_974, "locations": 415_153, "candidates": 1_000_000}
WORKER_COUNTS = (2, 64, 512)
#: The reference zone of ``catalog.synth``'s landscape: products placed there need no reprojection.
ZONE = catalog_synth.REFERENCE_EPSG
CELL_PX = PATCH_PX * PATCH_PX
RULES = Rules()


# --- processes and measurements ----------------------------------------------------------------------


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new spawned interpreter that runs nothing else (so its memory is its own)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(fn, *args).result()


def _proc_io() -> dict[str, int]:
    """This process's ``/proc/self/io`` counters (rchar: bytes read by syscalls; read_bytes: from storage)."""
    lines = Path("/proc/self/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (``VmHWM``; Linux >= 4.0). ``ru_maxrss`` cannot be reset, and in a spawned
    process it starts at the RSS its parent had when it forked."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """This process's peak RSS since start or the last ``reset_peak_rss`` (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError("/proc/self/status has no VmHWM")


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def measured(fn: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, float]]:
    """Run ``fn(*args)`` once: wall and CPU s (all threads), bytes read, RSS before and peak RSS during it."""
    reset_peak_rss()
    io, rss, cpu, started = _proc_io(), _rss_mb(), time.process_time(), time.perf_counter()
    result = fn(*args)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = _proc_io()
    return result, {
        "wall_s": wall,
        "cpu_s": cpu,
        "rchar": after["rchar"] - io["rchar"],
        "read_bytes": after["read_bytes"] - io["read_bytes"],
        "rss_before_mb": rss,
        "peak_rss_mb": _peak_rss_mb(),
    }


class Steps:
    """Wall, CPU and peak RSS above the start of each step of a run; functions timed by wrapping them."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}
        self.functions: dict[str, dict[str, float]] = {}
        self.missing: list[str] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        reset_peak_rss()
        start_rss, cpu, started = _rss_mb(), time.process_time(), time.perf_counter()
        yield
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        self.steps[name] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "rss_start_mb": start_rss,
            "peak_above_start_mb": _peak_rss_mb() - start_rss,
        }

    @contextmanager
    def wrapped(self, targets: Sequence[tuple[Any, str, str]]) -> Iterator[None]:
        """Time calls of ``module.attribute`` (looked up at call time) as ``label``, while the block runs.

        Targets the code no longer has are skipped and listed in ``missing`` (the library changes under
        the benchmark).
        """
        present = [(m, a, label) for m, a, label in targets if hasattr(m, a)]
        self.missing = sorted({label for m, a, label in targets if not hasattr(m, a)})
        originals = [(module, attribute, getattr(module, attribute)) for module, attribute, _ in present]
        for (module, attribute, original), (_, _, label) in zip(originals, present, strict=True):
            setattr(module, attribute, self._timer(label, original))
        try:
            yield
        finally:
            for module, attribute, original in originals:
                setattr(module, attribute, original)

    def _timer(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            cpu, started = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = self.functions.setdefault(label, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})
                entry["calls"] += 1
                entry["wall_s"] += time.perf_counter() - started
                entry["cpu_s"] += time.process_time() - cpu

        return timed


#: What ``pipeline.build`` calls to run a stage's tasks on the cluster (``_run`` before it was made public).
RUN_TASKS = "run_tasks" if hasattr(build_module, "run_tasks") else "_run"


@contextmanager
def no_tasks(stand_ins: dict[str, Callable[..., Any]] | None = None) -> Iterator[list[str]]:
    """``pipeline.build``'s task runner for runs whose tasks are all done: it must be handed no task (no
    cluster), except those of the stages in ``stand_ins``, which answer them (``stand_in(*task_args)``)
    without a worker. Yields the names of the tasks they answered."""
    original = getattr(build_module, RUN_TASKS)
    answered: list[str] = []

    def run(client: Any, tasks: Any, stage: str, progress: Any) -> list[Any]:
        tasks = list(tasks)
        if tasks and stage in (stand_ins or {}):
            answered.extend(name for name, _, _ in tasks)
            return [stand_ins[stage](*args) for _, _, args in tasks]  # type: ignore[index]
        if tasks:
            raise RuntimeError(f"{len(tasks)} {stage} tasks left to run: the work state is incomplete")
        return []

    setattr(build_module, RUN_TASKS, run)
    try:
        yield answered
    finally:
        setattr(build_module, RUN_TASKS, original)


# --- 1. products of the real size ----------------------------------------------------------------------


@dataclass(frozen=True)
class RealScene:
    """A product of the real size: raster shape, upper-left corner (on the 30 m lattice), swath, events.

    The valid swath is the parallelogram with corners at (``inset_x`` W, 0), (W, ``inset_y`` H),
    (W - ``inset_x`` W, H) and (0, H - ``inset_y`` H) in (col, row) pixels, as a rotated strip fills
    its north-up raster; outside it the image is nodata and QL_QUALITY_CLASSES is 3 (background).
    ``cloud_share`` of the swath is covered by cloud blobs, each with a shadow beside it and haze around it.
    """

    label: str
    width: int
    height: int
    x0: int
    y0: int
    datatake: int
    acquired: datetime
    inset_x: float
    inset_y: float
    cloud_share: float
    water_share: float

    def __post_init__(self) -> None:
        if (self.x0 - ANCHOR_M) % PIXEL_M or (self.y0 - ANCHOR_M) % PIXEL_M:
            raise ValueError(f"scene {self.label}: corner ({self.x0}, {self.y0}) is off the 30 m lattice")

    @property
    def name(self) -> str:
        processed = self.acquired + timedelta(days=1, hours=3)
        return str(ProductName(self.datatake, self.acquired, 1, "010402", processed))

    @property
    def transform(self) -> rasterio.Affine:
        return rasterio.Affine(PIXEL_M, 0, self.x0, 0, -PIXEL_M, self.y0)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


#: Upper-left corners are 15 (mod 30) m: on the EnMAP lattice. C revisits A (overlapping by about 60 %).
REAL_SCENES = (
    RealScene("A", 1200, 1200, 500_025, 5_600_025, 3001, _utc("2024-05-02T10:31:12"), 0.10, 0.14, 0.15, 0.04),
    RealScene("B", 1517, 1220, 560_025, 5_600_025, 3002, _utc("2024-06-30T10:20:45"), 0.15, 0.26, 0.06, 0.0),
    RealScene("C", 1300, 1250, 506_025, 5_595_525, 3003, _utc("2024-07-18T10:27:03"), 0.12, 0.18, 0.22, 0.04),
)
QUICK_SCENES = (
    RealScene("Q", 600, 560, 500_025, 5_600_025, 3101, _utc("2024-05-02T10:31:12"), 0.10, 0.14, 0.15, 0.04),
)
#: Rows of the spectral image rendered and written at once (memory stays about 0.2 GB per 1,500 columns).
RENDER_ROWS = 64


def swath_mask(scene: RealScene) -> np.ndarray:
    """True inside the valid swath (the parallelogram), (rows, cols)."""
    w, h = scene.width, scene.height
    corners = np.array(
        [(scene.inset_x * w, 0), (w, scene.inset_y * h), (w - scene.inset_x * w, h), (0, h - scene.inset_y * h)]
    )
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    inside = np.ones((h, w), bool)
    for (ax, ay), (bx, by) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        inside &= (bx - ax) * (rows - ay) - (by - ay) * (cols - ax) >= 0
    return inside


def blobs(shape: tuple[int, int], share: float, rng: np.random.Generator, within: np.ndarray) -> np.ndarray:
    """Round blobs (radius 40-160 px) added until they cover ``share`` of ``within``."""
    mask = np.zeros(shape, bool)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    target = share * within.sum()
    while (mask & within).sum() < target:
        r, c, radius = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.uniform(40, 160)
        mask |= (rows - r) ** 2 + (cols - c) ** 2 < radius**2
    return mask


def quality_layers(scene: RealScene, seed: int) -> dict[str, np.ndarray]:
    """The quality layers (asset key -> uint8 raster) of a real-size product."""
    rng = np.random.default_rng([seed, scene.datatake])
    shape = (scene.height, scene.width)
    swath = swath_mask(scene)
    cloud = blobs(shape, scene.cloud_share, rng, swath) & swath
    shadow = np.roll(cloud, (45, 70), axis=(0, 1)) & ~cloud & swath
    haze = blobs(shape, scene.cloud_share / 2, rng, swath) & swath & ~cloud
    cirrus = blobs(shape, 0.05, rng, swath) & swath
    water = blobs(shape, scene.water_share, rng, swath) & swath & ~cloud if scene.water_share else np.zeros(shape, bool)
    classes = np.where(swath, np.where(water, 2, 1), 3)
    layers = {
        "pixelmask": ~swath,
        "quality_classes": classes,
        "quality_cloud": cloud,
        "quality_cloudshadow": shadow,
        "quality_haze": haze,
        "quality_cirrus": cirrus * 2,
        "quality_snow": np.zeros(shape, bool),
        "quality_testflags": np.zeros(shape, bool),
    }
    return {key: layer.astype(np.uint8) for key, layer in layers.items()}


def write_spectral_image(path: Path, scene: RealScene, layers: dict[str, np.ndarray], seed: int) -> None:
    """The 224-band int16 image, DLR's layout: band-interleaved uncompressed strips (``catalog.rasters``' GTiff
    options), rendered from ``catalog.synth``'s landscape block by block: ground, cloud spectra, the
    water-vapour absorption, noise and nodata outside the swath, as ``catalog.synth`` renders its scenes."""
    landscape = catalog_synth.Landscape.from_seed(seed)
    absorption = (catalog_synth._absorption() / REFLECTANCE_SCALE).astype(np.float32)[:, None]
    nm = band_table()["center_nm"].to_numpy(np.float32)[:, None]
    cloud_spectrum = 1 - 0.1 * (nm - 400) / 2100
    rng = np.random.default_rng([seed, scene.datatake, 1])
    brightness = np.float32(rng.uniform(0.95, 1.05))
    profile = {
        "driver": "GTiff",
        "width": scene.width,
        "height": scene.height,
        "count": N_BANDS,
        "dtype": "int16",
        "crs": f"EPSG:{ZONE}",
        "transform": scene.transform,
        "nodata": NODATA,
        "interleave": "band",
        "compress": "none",
    }
    with rasterio.open(path, "w", **profile) as image:
        for top in range(0, scene.height, RENDER_ROWS):
            rows = np.arange(top, min(top + RENDER_ROWS, scene.height))
            x, y = np.meshgrid(scene.x0 + PIXEL_M * (np.arange(scene.width) + 0.5), scene.y0 - PIXEL_M * (rows + 0.5))
            reflectance = landscape.reflectance(x.ravel(), y.ravel()) * brightness
            cloud = layers["quality_cloud"][rows].ravel().astype(bool)
            reflectance[:, cloud] = cloud_spectrum * np.float32(0.6)
            dn = reflectance * absorption
            dn += rng.standard_normal(dn.shape, dtype=np.float32) * (dn * np.float32(0.004) + np.float32(3))
            cube = np.clip(np.rint(dn), NODATA + 1, np.iinfo(np.int16).max).astype(np.int16)
            cube[:, layers["pixelmask"][rows].ravel().astype(bool)] = NODATA
            image.write(cube.reshape(N_BANDS, len(rows), scene.width), window=Window(0, top, scene.width, len(rows)))


def product_metadata(scene: RealScene, layers: dict[str, np.ndarray]) -> ProductMetadata:
    """What the product's METADATA.XML says: name parts, size, projection, swath corners, covers, bands."""
    swath = layers["pixelmask"] == 0
    w, h = scene.width, scene.height
    px = [(scene.inset_x * w, 0), (w, scene.inset_y * h), (w - scene.inset_x * w, h), (0, h - scene.inset_y * h)]
    xs, ys = zip(*(scene.transform * p for p in px), strict=True)
    lon, lat = Transformer.from_crs(ZONE, 4326, always_xy=True).transform(xs, ys)
    covers = {
        name: float(round(100 * np.count_nonzero(layers[key][swath] != 0) / swath.sum()))
        for name, key in (
            ("cloud_cover", "quality_cloud"),
            ("cloud_shadow", "quality_cloudshadow"),
            ("snow_cover", "quality_snow"),
            ("haze_cover", "quality_haze"),
            ("cirrus_cover", "quality_cirrus"),
        )
    }
    name = ProductName.parse(scene.name)
    table = band_table()
    return ProductMetadata(
        name=scene.name,
        level="L2A",
        datatake=scene.datatake,
        tile=1,
        processor="01.04.02",
        acquired=name.acquired,
        processed=name.processed,
        n_bands=N_BANDS,
        corners=tuple((round(a, 7), round(b, 7)) for a, b in zip(lon, lat, strict=True)),
        bands=Bands(
            tuple(table["center_nm"].tolist()),
            tuple(table["fwhm_nm"].tolist()),
            (REFLECTANCE_SCALE,) * N_BANDS,
            (0.0,) * N_BANDS,
        ),
        width=w,
        height=h,
        product_format="GeoTIFF+Metadata",
        quality=0,
        water_cover=float(round(100 * np.count_nonzero(layers["quality_classes"][swath] == 2) / swath.sum())),
        projection=projection_name(ZONE),
        **covers,
    )


def write_real_product(archive: Path, scene: RealScene, seed: int) -> None:
    """One product folder: spectral image, quality layers and METADATA.XML, named as DLR names them."""
    folder = archive / scene.name
    folder.mkdir(parents=True, exist_ok=True)
    layers = quality_layers(scene, seed)
    names = []
    for key, layer in layers.items():
        files = encode_raster(
            f"{scene.name}-{ASSET_SUFFIXES[key]}",
            layer[None],
            crs=f"EPSG:{ZONE}",
            transform=scene.transform,
            nodata=None,
            fmt="GTiff",
        )
        for file, data in files.items():
            (folder / file).write_bytes(data)
            names.append(file)
    image = f"{scene.name}-{ASSET_SUFFIXES['image']}.TIF"
    write_spectral_image(folder / image, scene, layers, seed)
    xml = product_filename(scene.name, "metadata")
    (folder / xml).write_bytes(metadata_xml(product_metadata(scene, layers), files=sorted([*names, image, xml])))


def cached_real_products(cache: Path, scenes: Sequence[RealScene], seed: int) -> tuple[Path, float]:
    """The archive of ``scenes`` (written once per scenes, seed and generator source) and the s it took."""
    generator = [
        pyinspect.getsource(fn)
        for fn in (swath_mask, blobs, quality_layers, write_spectral_image, product_metadata, write_real_product)
    ]
    source = Path(catalog_synth.__file__).read_text() + "".join(generator) + repr(scenes)
    root = cache / f"spectralearth-real-s{seed}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    done = root / "COMPLETE"
    if done.exists():
        return root / "archive", 0.0
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    for scene in scenes:
        write_real_product(root / "archive", scene, seed)
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"scenes": [s.label for s in scenes], "seconds": seconds}))
    return root / "archive", seconds


def image_layout(href: str) -> dict[str, Any]:
    """How the spectral image is laid out on disk (to check it is DLR's stripped, band-interleaved layout)."""
    with rasterio.open(href) as image:
        return {
            "shape": [image.count, image.height, image.width],
            "interleave": image.interleaving.name if image.interleaving else None,
            "compression": image.compression.name if image.compression else None,
            "block_shape": list(image.block_shapes[0]),
            "tiled": image.profile.get("tiled", False),
            "bytes": Path(href).stat().st_size,
        }


def warm_up(href: str) -> None:
    """What a long-running Dask worker has done before: GDAL drivers loaded, zarr and blosc imported."""
    import zarr

    with rasterio.open(href) as layer:
        layer.read(1, window=Window(0, 0, 8, 8))
    array = zarr.create_array({}, shape=(2, 8), chunks=(1, 8), dtype="int16", compressors=[build_module_codec()])
    array[:] = 1


def build_module_codec() -> Any:
    from spectral_corpus.stages.store import PATCH_COMPRESSOR

    return PATCH_COMPRESSOR


#: Functions timed inside the tasks (module, attribute, label), by wrapping them.
INSPECT_FUNCTIONS = (
    (stages_inspect, "_check_blocks_present", "inspect._check_blocks_present (truncation check)"),
    (stages_inspect, "_read_band", "inspect._read_band (band 1 and the quality layers)"),
    (stages_inspect, "_count_cells", "inspect._count_cells"),
)
READ_LABEL = "materialize._cut_patches (window reads)"
MATERIALIZE_FUNCTIONS = (
    (stages_materialize, "_cut_patches", READ_LABEL),
    (stages_materialize, "moments_of", "materialize.moments_of (band moments)"),
)


def inspect_task(record: SceneRecord, warm_href: str) -> tuple[InspectResult, dict[str, Any]]:
    """Run in a fresh process: ``inspect_scene`` once, measured after a warm-up."""
    warm_up(warm_href)
    steps = Steps()
    with steps.wrapped(INSPECT_FUNCTIONS):
        result, figures = measured(inspect_scene, record)
    return result, {**figures, "functions": steps.functions}


def materialize_task(
    root: Path, shard: int, rows: pd.DataFrame, bands: np.ndarray, warm_href: str
) -> tuple[ShardResult, dict[str, Any]]:
    """Run in a fresh process: ``materialize_shard`` once, measured after a warm-up."""
    warm_up(warm_href)
    steps = Steps()
    with steps.wrapped(MATERIALIZE_FUNCTIONS):
        result, figures = measured(materialize_shard, LocalFiles(root), shard, rows, bands)
    return result, {**figures, "functions": steps.functions}


def bench_real_size(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: inspect every real-size scene and write every shard of their plan, each in a fresh process."""
    scenes_spec = QUICK_SCENES if args.quick else REAL_SCENES
    archive, generated_s = cached_real_products(args.cache, scenes_spec, args.seed)
    records = index_archive(archive)
    if [r.status for r in records] != [OK] * len(scenes_spec):
        raise SystemExit(f"{archive}: products rejected: {[(r.product, r.reason) for r in records if r.status != OK]}")
    label = {s.name: s.label for s in scenes_spec}
    warm_href = records[0].asset_map["quality_testflags"]
    wait_for_quiet(args.wait_quiet, 10.0)
    load_before = system_load()
    with machine_cpu() as account:
        own = own_cpu()
        inspected, per_scene = [], []
        for record in records:
            result, figures = in_fresh_process(inspect_task, record, warm_href)
            inspected.append(result)
            flags = result.candidates
            per_scene.append(
                {
                    "scene": label[record.product],
                    "product": record.product,
                    "layout": image_layout(record.asset_map["image"]),
                    "candidates": len(flags),
                    "clean_candidates": int((flags["n_flagged"] == 0).sum()),
                    "inspect": figures,
                }
            )
        files, plan, added = plan_real(args.cache, records, inspected)
        bands = selected_bands(RULES.bands)
        hrefs = build_module._image_hrefs(plan.scenes)
        observations = added.assign(href=added["product"].map(hrefs), train=added["split"] == "train")
        shards = []
        for shard, rows in observations.groupby("shard"):
            task_rows = rows[["obs", "href", "row", "col", "train"]]
            result, figures = in_fresh_process(materialize_task, files.path, int(shard), task_rows, bands, warm_href)
            shards.append(
                {
                    **asdict(result),
                    "task": figures,
                    "scenes": sorted(label[p] for p in rows["product"].unique()),
                    "window_raw_bytes": window_bytes(rows, len(bands)),
                }
            )
        own = own_cpu() - own
    kept = added.groupby("product").size()
    for entry in per_scene:
        entry["observations"] = int(kept.get(entry["product"], 0))
    shutil.rmtree(files.path, ignore_errors=True)
    return {
        "generated_s": generated_s,
        "scenes": per_scene,
        "shards": shards,
        "summary": summarise_real(per_scene, shards),
        "load": {"before": load_before, "other_cpu_s": max(0.0, account.busy_s - own), "own_cpu_s": own},
    }


@dataclass(frozen=True)
class RealPlan:
    """The plan of the real-size scenes and the scene table it was made from."""

    scenes: pd.DataFrame
    observations: pd.DataFrame


def plan_real(
    cache: Path, records: list[SceneRecord], inspected: list[InspectResult]
) -> tuple[LocalFiles, RealPlan, pd.DataFrame]:
    """Plan the real-size scenes as ``pipeline.build._update`` does and create the (empty) patch array."""
    scenes = pipeline_tables.merge_scenes(None, scene_table(records))
    scenes = pipeline_tables.apply_inspection(scenes, inspected)
    plan = build_module._plan(None, scenes, inspected, RULES)
    files = LocalFiles(Path(tempfile.mkdtemp(prefix="spectralearth-real-corpus-", dir=cache)))
    build_module._prepare_array(files, plan, None, RULES)
    return files, RealPlan(scenes, plan.observations), plan.observations


def window_bytes(rows: pd.DataFrame, n_bands: int) -> int:
    """Raw bytes of the bounding windows a shard task reads (one per scene), ``n_bands`` bands."""
    spans = rows.groupby("product").agg(r0=("row", "min"), r1=("row", "max"), c0=("col", "min"), c1=("col", "max"))
    pixels = (spans["r1"] - spans["r0"] + PATCH_PX) * (spans["c1"] - spans["c0"] + PATCH_PX)
    return int(pixels.sum()) * n_bands * 2


def summarise_real(scenes: list[dict[str, Any]], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scene (inspect) and per patch (materialize) costs of part 1."""
    megapixels = sum(s["layout"]["shape"][1] * s["layout"]["shape"][2] for s in scenes) / 1e6
    patches = sum(s["n_obs"] for s in shards)
    inspect_cpu = sum(s["inspect"]["cpu_s"] for s in scenes)
    task = {key: sum(s["task"][key] for s in shards) for key in ("wall_s", "cpu_s", "rchar", "read_bytes")}
    read_cpu = sum(s["task"]["functions"][READ_LABEL]["cpu_s"] for s in shards)
    return {
        "scenes": len(scenes),
        "megapixels_per_scene": megapixels / len(scenes),
        "candidates_per_scene": sum(s["candidates"] for s in scenes) / len(scenes),
        "observations_per_scene": patches / len(scenes),
        "inspect_wall_s_per_scene": sum(s["inspect"]["wall_s"] for s in scenes) / len(scenes),
        "inspect_cpu_s_per_scene": inspect_cpu / len(scenes),
        "inspect_cpu_s_per_megapixel": inspect_cpu / megapixels,
        "inspect_rchar_mb_per_scene": sum(s["inspect"]["rchar"] for s in scenes) / len(scenes) / MB,
        "inspect_peak_rss_mb": max(s["inspect"]["peak_rss_mb"] for s in scenes),
        "inspect_peak_above_start_mb": max(s["inspect"]["peak_rss_mb"] - s["inspect"]["rss_before_mb"] for s in scenes),
        "shards": len(shards),
        "patches": patches,
        "materialize_wall_s_per_shard": task["wall_s"] / len(shards),
        "materialize_cpu_s_per_shard": task["cpu_s"] / len(shards),
        "materialize_wall_ms_per_patch": 1e3 * task["wall_s"] / patches,
        "materialize_cpu_ms_per_patch": 1e3 * task["cpu_s"] / patches,
        "materialize_read_ms_per_patch": 1e3 * sum(s["read_seconds"] for s in shards) / patches,
        "materialize_write_ms_per_patch": 1e3 * sum(s["write_seconds"] for s in shards) / patches,
        "materialize_rchar_mb_per_patch": task["rchar"] / patches / MB,
        "materialize_rchar_mb_per_scene": task["rchar"] / len(scenes) / MB,
        "materialize_window_mb_per_patch": sum(s["window_raw_bytes"] for s in shards) / patches / MB,
        "materialize_written_mb_per_patch": sum(s["nbytes"] for s in shards) / patches / MB,
        "materialize_raw_mb_per_patch": sum(s["raw_bytes"] for s in shards) / patches / MB,
        "materialize_peak_rss_mb": max(s["task"]["peak_rss_mb"] for s in shards),
        "materialize_peak_above_start_mb": max(s["task"]["peak_rss_mb"] - s["task"]["rss_before_mb"] for s in shards),
        "materialize_shard_scenes": [len(s["scenes"]) for s in shards],
        "inspect_functions_cpu_s_per_scene": _function_sums([s["inspect"] for s in scenes], len(scenes)),
        "materialize_functions_cpu_ms_per_patch": _function_sums([s["task"] for s in shards], patches / 1e3),
        "materialize_read_cpu_s_per_scene": read_cpu / len(scenes),
        "materialize_rest_cpu_ms_per_patch": 1e3 * (task["cpu_s"] - read_cpu) / patches,
    }


def _function_sums(figures: list[dict[str, Any]], per: float) -> dict[str, float]:
    """CPU s of each wrapped function over all tasks, divided by ``per``."""
    labels = {label for f in figures for label in f["functions"]}
    return {label: sum(f["functions"].get(label, {}).get("cpu_s", 0.0) for f in figures) / per for label in labels}


# --- 2. a SpectralEarth-size world without pixels ------------------------------------------------------

#: Tiles per datatake (EnMAP datatakes are cut into tiles along the track) and their chances.
TILES = (np.arange(1, 7), np.array([0.22, 0.25, 0.22, 0.15, 0.10, 0.06]))
#: Shares of datatakes that revisit an earlier datatake's ground (shifted by up to 2 cells) or that lie
#: astride the eastern edge of their UTM zone with a twin acquisition of the next zone on the same ground.
REVISIT_SHARE, ZONE_EDGE_SHARE = 0.42, 0.01


@dataclass
class World:
    """A generated SpectralEarth-like input: scene records and the candidate table inspect would give."""

    records: list[SceneRecord]
    candidates: pd.DataFrame
    datatakes: int
    revisits: int
    zone_edge_pairs: int
    seconds: float = 0.0
    by_product: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)


def _zone_epsg(zone: int, south: bool) -> int:
    return (32700 if south else 32600) + zone


@functools.cache
def _transformer(source: int, target: int) -> Transformer:
    return Transformer.from_crs(source, target, always_xy=True)


def _datatakes(n_scenes: int, rng: np.random.Generator) -> pd.DataFrame:
    """Datatakes (zone, first cell, size, tiles, time) until they hold ``n_scenes`` tiles."""
    rows: list[dict[str, Any]] = []
    total = 0
    start = datetime(2022, 11, 1, tzinfo=UTC)
    while total < n_scenes:
        k = len(rows)
        tiles = min(int(rng.choice(TILES[0], p=TILES[1])), n_scenes - total)
        n_cols, n_rows = int(rng.choice([9, 10], p=[0.45, 0.55])), 9
        when = start + timedelta(days=float(rng.uniform(0, 900)), seconds=float(rng.uniform(0, 86_400)))
        u = rng.uniform()
        if rows and u < REVISIT_SHARE:
            base = rows[int(rng.integers(len(rows)))]
            row = {
                **base,
                "ix0": base["ix0"] + int(rng.integers(-2, 3)),
                "iy0": base["iy0"] + int(rng.integers(-2, 3)),
                "tiles": min(base["tiles"], tiles),
                "kind": "revisit",
            }
        else:
            zone, south = int(rng.integers(2, 60)), bool(rng.uniform() < 0.3)
            lat = -rng.uniform(0.5, 56) if south else rng.uniform(0.5, 72)
            lon = -183.0 + 6.0 * zone + rng.uniform(-3, 3)  # the scene's centre lies in its zone
            epsg = _zone_epsg(zone, south)
            easting, northing = _transformer(4326, epsg).transform(lon, lat)
            row = {
                "epsg": epsg,
                "ix0": int((easting - ANCHOR_M) // CELL_M) - n_cols // 2,
                "iy0": int((northing - ANCHOR_M) // CELL_M) + n_rows // 2,
                "n_cols": n_cols,
                "n_rows": n_rows,
                "tiles": tiles,
                "kind": "zone_edge" if u > 1 - ZONE_EDGE_SHARE else "plain",
            }
        rows.append({**row, "acquired": when, "datatake": 10_000 + k})
        total += row["tiles"]
        if row["kind"] == "zone_edge" and total < n_scenes:
            rows.append(_zone_twin(rows[-1], rng, len(rows)))
            rows[-2].update(_astride_edge(rows[-2]))
            total += rows[-1]["tiles"]
    frame = pd.DataFrame(rows)
    excess = int(frame["tiles"].sum()) - n_scenes
    frame.loc[frame.index[-1], "tiles"] -= excess
    return frame[frame["tiles"] > 0].reset_index(drop=True)


def _edge_lon(epsg: int) -> float:
    return -180.0 + 6.0 * (epsg % 100)  # the eastern edge of the zone


def _astride_edge(datatake: dict[str, Any]) -> dict[str, int]:
    """Move a datatake so that its columns straddle the eastern edge of its zone."""
    epsg = datatake["epsg"]
    northing = ANCHOR_M + CELL_M * datatake["iy0"]
    _, lat = _transformer(epsg, 4326).transform(500_000.0, northing)
    east, _ = _transformer(4326, epsg).transform(_edge_lon(epsg), lat)
    return {"ix0": int((east - ANCHOR_M) // CELL_M) - datatake["n_cols"] // 2}


def _zone_twin(datatake: dict[str, Any], rng: np.random.Generator, k: int) -> dict[str, Any]:
    """Another acquisition of the ground astride the zone edge, in the next zone (another datatake)."""
    epsg = datatake["epsg"]
    northing = ANCHOR_M + CELL_M * datatake["iy0"]
    _, lat = _transformer(epsg, 4326).transform(500_000.0, northing)
    twin_epsg = epsg + 1
    west, twin_northing = _transformer(4326, twin_epsg).transform(_edge_lon(epsg), lat)
    when = datatake["acquired"] + timedelta(days=float(rng.uniform(5, 300)))
    return {
        **datatake,
        "epsg": twin_epsg,
        "ix0": int((west - ANCHOR_M) // CELL_M) - datatake["n_cols"] // 2,
        "iy0": int((twin_northing - ANCHOR_M) // CELL_M),
        "kind": "zone_twin",
        "acquired": when,
        "datatake": 10_000 + k,
    }


def _scenes(datatakes: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One row per tile: consecutive tiles of a datatake overlap by one cell row, a few seconds apart."""
    frame = datatakes.loc[datatakes.index.repeat(datatakes["tiles"])].reset_index(drop=True)
    frame["tile"] = frame.groupby("datatake").cumcount() + 1
    frame["iy_top"] = frame["iy0"] - (frame["tile"] - 1) * (frame["n_rows"] - 1)
    frame["acquired"] = frame["acquired"] + pd.to_timedelta(4.4 * (frame["tile"] - 1), unit="s")
    n = len(frame)
    frame["row0"], frame["col0"] = rng.integers(0, PATCH_PX, n), rng.integers(0, PATCH_PX, n)
    frame["width"] = frame["col0"] + PATCH_PX * frame["n_cols"] + rng.integers(0, PATCH_PX, n)
    frame["height"] = frame["row0"] + PATCH_PX * frame["n_rows"] + rng.integers(0, PATCH_PX, n)
    frame["inset_x"], frame["inset_y"] = rng.uniform(0.08, 0.16, n), rng.uniform(0.12, 0.26, n)
    frame["cloudiness"] = rng.beta(0.5, 3.0, n)
    return frame


def _candidate_cells(scenes: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Every full cell of every scene with its flag counts (what ``inspect`` would count)."""
    per_scene = (scenes["n_rows"] * scenes["n_cols"]).to_numpy()
    s = np.repeat(np.arange(len(scenes)), per_scene)
    k = np.arange(len(s)) - np.repeat(np.cumsum(per_scene) - per_scene, per_scene)
    n_cols = scenes["n_cols"].to_numpy()[s]
    r, c = k // n_cols, k % n_cols
    row = scenes["row0"].to_numpy()[s] + PATCH_PX * r
    col = scenes["col0"].to_numpy()[s] + PATCH_PX * c
    w, h = scenes["width"].to_numpy()[s], scenes["height"].to_numpy()[s]
    ax, ay = scenes["inset_x"].to_numpy()[s] * w, scenes["inset_y"].to_numpy()[s] * h
    corners_x = np.array([ax, w, w - ax, np.zeros_like(ax)])
    corners_y = np.array([np.zeros_like(ay), ay, h, h - ay])
    outside = np.zeros(len(s), np.int64)
    for dx, dy in ((0, 0), (PATCH_PX, 0), (0, PATCH_PX), (PATCH_PX, PATCH_PX)):
        px, py = col + dx, row + dy
        inside = np.ones(len(s), bool)
        for i in range(4):
            x0, y0, x1, y1 = corners_x[i], corners_y[i], corners_x[(i + 1) % 4], corners_y[(i + 1) % 4]
            inside &= (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0) >= 0
        outside += ~inside
    n = len(s)
    cloudy = rng.uniform(size=n) < scenes["cloudiness"].to_numpy()[s]
    counts = {
        "nodata": np.where(outside > 0, np.maximum(1, outside * CELL_PX // 8), 0),
        "cloud": np.where(cloudy, rng.integers(164, CELL_PX, n), rng.integers(0, 120, n) * (rng.uniform(size=n) < 0.2)),
        "cloudshadow": np.where(
            cloudy & (rng.uniform(size=n) < 0.6),
            rng.integers(1, 4_000, n),
            rng.integers(0, 400, n) * (rng.uniform(size=n) < 0.05),
        ),
        "snow": rng.integers(1_639, CELL_PX, n) * (rng.uniform(size=n) < 0.015),
        "haze": rng.integers(0, 3_000, n) * (rng.uniform(size=n) < 0.3),
        "cirrus": rng.integers(0, 3_000, n) * (rng.uniform(size=n) < 0.2),
        "water": rng.integers(0, CELL_PX, n) * (rng.uniform(size=n) < 0.15),
    }
    flagged = np.minimum(CELL_PX, sum(v for key, v in counts.items() if key != "water"))
    table = pd.DataFrame(
        {
            "product": scenes["product"].to_numpy()[s],
            "epsg": scenes["epsg"].to_numpy()[s],
            "ix": scenes["ix0"].to_numpy()[s] + c,
            "iy": scenes["iy_top"].to_numpy()[s] - r,
            "row": row,
            "col": col,
            "n_flagged": flagged,
            **{f"n_{flag}": counts[flag] for flag in FLAGS},
        }
    )
    return table[CANDIDATE_COLUMNS].astype({c: "int64" for c in CANDIDATE_COLUMNS if c != "product"})


def _footprints(scenes: pd.DataFrame) -> list[shapely.Polygon]:
    """Each scene's swath (lon, lat) from its corners in its zone."""
    x0 = ANCHOR_M + CELL_M * scenes["ix0"] - PIXEL_M * scenes["col0"]
    y0 = ANCHOR_M + CELL_M * (scenes["iy_top"] + 1) + PIXEL_M * scenes["row0"]
    w, h = PIXEL_M * scenes["width"], PIXEL_M * scenes["height"]
    ax, ay = scenes["inset_x"] * w, scenes["inset_y"] * h
    xs = np.stack([x0 + ax, x0 + w, x0 + w - ax, x0], axis=1)
    ys = np.stack([y0, y0 - ay, y0 - h, y0 - h + ay], axis=1)
    polygons: list[shapely.Polygon] = [shapely.Polygon()] * len(scenes)
    for epsg, positions in scenes.groupby("epsg").indices.items():
        lon, lat = _transformer(int(epsg), 4326).transform(xs[positions], ys[positions])
        for i, p in enumerate(positions):
            polygons[p] = shapely.Polygon(np.column_stack([lon[i], lat[i]]))
    return polygons


def _records(scenes: pd.DataFrame, candidates: pd.DataFrame) -> list[SceneRecord]:
    """A SceneRecord per scene, as ``index_archive`` makes it from a METADATA.XML."""
    table = band_table()
    centres, fwhm = tuple(table["center_nm"].tolist()), tuple(table["fwhm_nm"].tolist())
    swath = candidates["n_nodata"] == 0
    covers = (
        candidates[swath]
        .assign(**{f: candidates[f"n_{f}"] / CELL_PX for f in FLAGS})
        .groupby("product")[list(FLAGS)]
        .mean()
        * 100
    ).round()
    covers = covers.reindex(scenes["product"]).fillna(0.0)
    footprints = _footprints(scenes)
    records = []
    for i, scene in enumerate(scenes.itertuples(index=False)):
        product = scene.product
        source = f"/archive/{product}"
        assets = tuple(sorted((key, f"{source}/{product_filename(product, key)}") for key in ASSET_SUFFIXES))
        cover = covers.loc[product]
        records.append(
            SceneRecord(
                product=product,
                source=source,
                datatake=int(scene.datatake),
                tile=int(scene.tile),
                version="010402",
                acquired=scene.acquired.to_pydatetime(),
                processed=scene.processed.to_pydatetime(),
                epsg=int(scene.epsg),
                width=int(scene.width),
                height=int(scene.height),
                described_by=METADATA_XML,
                footprint=footprints[i],
                cloud_cover=cover["cloud"],
                cloud_shadow=cover["cloudshadow"],
                snow_cover=cover["snow"],
                haze_cover=cover["haze"],
                cirrus_cover=cover["cirrus"],
                water_cover=cover["water"],
                quality=0.0,
                wavelengths_nm=centres,
                fwhm_nm=fwhm,
                assets=assets,
            )
        )
    return records


def synthetic_world(n_scenes: int, seed: int) -> World:
    """``n_scenes`` scenes and their candidate cells, shaped like SpectralEarth's input (see the module doc)."""
    started = time.perf_counter()
    rng = np.random.default_rng([seed, n_scenes])
    datatakes = _datatakes(n_scenes, rng)
    scenes = _scenes(datatakes, rng)
    scenes["acquired"] = scenes["acquired"].dt.floor("s")
    scenes["processed"] = scenes["acquired"] + pd.Timedelta(days=2, hours=5)
    scenes["product"] = [
        str(ProductName(int(d), a.to_pydatetime(), int(t), "010402", p.to_pydatetime()))
        for d, a, t, p in zip(scenes["datatake"], scenes["acquired"], scenes["tile"], scenes["processed"], strict=True)
    ]
    candidates = _candidate_cells(scenes, rng)
    records = _records(scenes, candidates)
    kinds = datatakes["kind"].value_counts()
    return World(
        records,
        candidates,
        len(datatakes),
        int(kinds.get("revisit", 0)),
        int(kinds.get("zone_twin", 0)),
        time.perf_counter() - started,
    )


# --- 2. the client's steps at scale --------------------------------------------------------------------

#: Functions timed inside the client's steps (module, attribute, label). Nested ones count in their callers too.
FUNCTIONS: tuple[tuple[Any, str, str], ...] = (
    (pipeline_tables, "merge_scenes", "tables.merge_scenes"),
    (pipeline_tables, "keep_newest", "scenes.keep_newest"),
    (pipeline_tables, "records_from_table", "scenes.records_from_table (in merge_scenes)"),
    (pipeline_tables, "scene_table", "scenes.scene_table (in merge_scenes)"),
    (pipeline_work, "load_inspections", "work.load_inspections"),
    (build_module, "plan_corpus", "plan.plan_corpus"),
    (build_module, "extend_plan", "plan.extend_plan"),
    (stages_plan, "cross_zone_neighbours", "plan.cross_zone_neighbours"),
    (stages_plan, "_threshold_reasons", "plan._threshold_reasons"),
    (stages_plan, "_mark_duplicates", "plan._mark_duplicates"),
    (stages_plan, "_mark_zone_overlaps", "plan._mark_zone_overlaps"),
    (stages_plan, "zone_overlap_losers", "plan.zone_overlap_losers"),
    (stages_plan, "cell_footprints", "plan.cell_footprints"),
    (stages_plan, "_assign_locations", "plan._assign_locations"),
    (stages_plan, "assign_splits", "splits.assign_splits"),
    (stages_splits, "block_uniform", "splits.block_uniform"),
    (stages_plan, "_layout", "plan._layout"),
    (build_module, "_marker", "build._marker (a shard marker read)"),
    (pipeline_tables, "count_per_scene", "tables.count_per_scene"),
    (pipeline_tables, "observation_table", "tables.observation_table"),
    (pipeline_tables, "location_table", "tables.location_table"),
    (pipeline_tables, "retired_table", "tables.retired_table"),
    (build_module, "write_coordinates", "build.write_coordinates"),
    (build_module, "band_statistics", "build.band_statistics"),
    (build_module, "commit_version", "commit.commit_version"),
    (stages_commit, "table_bytes", "corpus_format.table_bytes (all tables)"),
    (LocalFiles, "write_folder", "LocalFiles.write_folder"),
)


def _write_markers(files: LocalFiles, observations: pd.DataFrame, n_bands: int, rng: np.random.Generator) -> None:
    """Each shard's marker as ``materialize_shard`` writes it (sizes, checksum, task times, training moments)."""
    for shard, rows in observations.groupby("shard"):
        obs = rows["obs"].to_numpy()
        train = rows.loc[rows["split"] == "train", "obs"].tolist()
        result = ShardResult(
            shard=int(shard),
            first_obs=int(obs.min()),
            n_obs=len(obs),
            nbytes=int(len(obs) * 3.9e6),
            raw_bytes=len(obs) * n_bands * CELL_PX * 2,
            sha256=hashlib.sha256(str(shard).encode()).hexdigest(),
            read_seconds=0.5,
            write_seconds=1.0,
            peak_rss_mb=700.0,
        )
        count, mean, m2 = (
            json.dumps([len(train) * CELL_PX] * n_bands),
            json.dumps(rng.uniform(100, 4000, n_bands).tolist()),
            json.dumps(rng.uniform(1e9, 1e11, n_bands).tolist()),
        )
        moments = f'{{"key": "{moments_key(train)}", "count": {count}, "mean": {mean}, "m2": {m2}}}'
        files.write(shard_marker(int(shard)), f'{json.dumps(asdict(result))[:-1]}, "moments": {moments}}}'.encode())


def client_steps(
    records: Sequence[SceneRecord],
    candidates: pd.DataFrame,
    root: Path,
    steps: Steps,
    base: Any = None,
    stand_ins: dict[str, Callable[..., Any]] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """The client's steps of ``pipeline.build._update`` for a build of ``records`` into ``root`` (or, over the
    ``base`` corpus reader, an extension by them), every task's output written beforehand as the task writes
    it, or answered by ``stand_ins`` (see ``no_tasks``).

    Returns the plan, the manifest and the untimed setup (seconds; the names of the tasks stood in for)."""
    files = LocalFiles(root)
    work = WorkState(files)
    options = BuildOptions(source="/archive", out=root, query=SceneQuery(), rules=RULES)
    n_bands = len(selected_bands(RULES.bands))
    setup: dict[str, Any] = {}
    with steps.wrapped(FUNCTIONS), no_tasks(stand_ins) as answered:
        with steps.step("catalog: scene table, work state, merge_scenes, records"):
            work.record_scenes(scene_table(records, {"source": options.source, **options.query.as_dict()}))
            found = work.scenes()
            assert found is not None
            scenes = pipeline_tables.merge_scenes(base.table("scenes") if base else None, found)
            known = set(base.table("scenes")["product"]) if base else set()
            new = [r for r in records_from_table(pipeline_tables.ok_scenes(scenes)) if r.product not in known]
        started = time.perf_counter()
        by_product = dict(tuple(candidates.groupby("product", sort=False)))
        for record in new:
            result = InspectResult(record.product, OK, epsg=record.epsg, candidates=by_product[record.product])
            save_inspection(result, files, work.inspection_key(record.product))
        del by_product
        setup["inspections_written_s"] = time.perf_counter() - started
        with steps.step("gather inspections (build._inspect)"):
            inspected = build_module._inspect(None, work, new, None)
        with steps.step("apply_inspection"):
            scenes = pipeline_tables.apply_inspection(scenes, inspected)
            scenes = pipeline_tables.reject(scenes, work.read_failures())
        with steps.step("plan (build._plan)"):
            plan = build_module._plan(base, scenes, inspected, RULES)
        with steps.step("create patch array (build._prepare_array)"):
            build_module._prepare_array(files, plan, base, RULES)
        added = plan.observations[plan.observations["shard"] >= build_module._first_shard(base)]
        started = time.perf_counter()
        _write_markers(files, added, n_bands, np.random.default_rng(len(records)))
        setup["markers_written_s"] = time.perf_counter() - started
        with steps.step("gather shard markers (build._materialize)"):
            shards, written, failures = build_module._materialize(None, files, scenes, added, RULES, None)
            assert not failures
            if base is not None:
                shards = pd.concat([base.table("shards"), shards], ignore_index=True)
        with steps.step("moments (build._moments)"):
            moments = build_module._moments(None, files, plan.observations, base, n_bands, None, written)
        with steps.step("commit (build._commit)"):
            version = base.version + 1 if base else 1
            manifest = build_module._commit(files, options, base, version, scenes, plan, shards, moments)
        with steps.step("remove work state"):
            work.remove()
    setup["stood_in_for"] = answered
    return plan, manifest, setup


def client_at_scale(n_scenes: int, seed: int, root: Path) -> dict[str, Any]:
    """Run in a fresh process: the client's steps of a build of ``n_scenes`` generated scenes (part 2)."""
    reset_peak_rss()
    steps = Steps()
    world = synthetic_world(n_scenes, seed)
    rss_after_world = _rss_mb()
    plan, manifest, setup = client_steps(world.records, world.candidates, root, steps)
    setup["world_s"] = world.seconds
    fates = plan.candidates["drop_reason"].replace("", "kept").value_counts()
    stacks = plan.observations.groupby("location_id").size()
    return {
        "scenes": len(world.records),
        "datatakes": world.datatakes,
        "revisit_datatakes": world.revisits,
        "zone_edge_pairs": world.zone_edge_pairs,
        "candidates": len(world.candidates),
        "observations": manifest.n_obs,
        "locations": manifest.n_locations,
        "shards": manifest.n_shards,
        "multi_date_location_share": float((stacks > 1).mean()),
        "dates_per_multi_date_location": float(stacks[stacks > 1].mean()),
        "fates": {str(k): int(v) for k, v in fates.items()},
        "table_mb": {p.name: p.stat().st_size / MB for p in (root / "versions" / "v0001").iterdir()},
        "setup_s": setup,
        "steps": steps.steps,
        "functions": steps.functions,
        "rss_after_world_mb": rss_after_world,
        "functions_not_found": steps.missing,
        "client_peak_rss_mb": max(v["rss_start_mb"] + v["peak_above_start_mb"] for v in steps.steps.values()),
    }


# --- 3. the loader's index -----------------------------------------------------------------------------


def loader_index(root: Path) -> dict[str, Any]:
    """Run in a fresh process: build the training index over a committed corpus (part 3)."""
    import torch

    from spectral_corpus.training import CorpusDataset, ShardAwareSampler

    torch.set_num_threads(1)
    reset_peak_rss()
    out: dict[str, Any] = {"rss_after_imports_mb": _rss_mb()}
    for unit, views in (("location", 2), ("observation", 1)):
        rss, cpu, started = _rss_mb(), time.process_time(), time.perf_counter()
        dataset = CorpusDataset(root, split="train", unit=unit, views=views)
        entry: dict[str, Any] = {
            "items": len(dataset),
            "construct_wall_s": time.perf_counter() - started,
            "construct_cpu_s": time.process_time() - cpu,
            "rss_delta_mb": _rss_mb() - rss,
            "index_arrays_mb": sum(v.nbytes for v in vars(dataset).values() if isinstance(v, np.ndarray)) / MB,
        }
        started = time.perf_counter()
        state = pickle.dumps(dataset)
        entry["pickle_bytes"] = len(state)
        entry["pickle_s"] = time.perf_counter() - started
        tracemalloc.start()
        started = time.perf_counter()
        copy = pickle.loads(state)
        entry["unpickle_s"] = time.perf_counter() - started
        entry["unpickled_traced_mb"] = tracemalloc.get_traced_memory()[0] / MB  # what a spawned worker holds more
        tracemalloc.stop()
        del copy
        for world_size in (1, 512):
            started = time.perf_counter()
            sampler = ShardAwareSampler(dataset, seed=0, rank=0, world_size=world_size)
            built = time.perf_counter() - started
            started = time.perf_counter()
            length = len(sampler)
            length_s = time.perf_counter() - started
            started = time.perf_counter()
            epoch = list(iter(sampler))
            entry[f"sampler_{world_size}_ranks"] = {
                "build_s": built,
                "len_s": length_s,
                "epoch_indices_s": time.perf_counter() - started,
                "items_per_rank": length,
                "shards": len(sampler.groups),
            }
            del epoch
        out[unit] = entry
        del dataset
    out["rss_end_mb"] = _rss_mb()
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def antimeridian_probe() -> dict[str, Any]:
    """A cell of zone 60 astride 180 degrees (65 N, Chukotka) and one of zone 32 at the same latitude, far away:
    the first cell's footprint (``stages.plan.cell_footprints``) and what ``zone_overlap_losers`` makes of them."""
    east, north = _transformer(4326, 32660).transform(180.0, 65.0)
    far_east, far_north = _transformer(4326, 32632).transform(9.0, 65.0)
    cells = pd.DataFrame(
        {
            "epsg": [32660, 32632],
            "ix": [int((east - ANCHOR_M) // CELL_M), int((far_east - ANCHOR_M) // CELL_M)],
            "iy": [int((north - ANCHOR_M) // CELL_M), int((far_north - ANCHOR_M) // CELL_M)],
        }
    )
    footprint = stages_plan.cell_footprints(cells).geometry.iloc[0]
    out: dict[str, Any] = {
        "cells": cells.to_dict("records"),
        "footprint_bounds": list(footprint.bounds),
        "footprint_valid": bool(footprint.is_valid),
    }
    try:
        out["zone_overlap_losers"] = stages_plan.zone_overlap_losers(cells, RULES.zone_overlap).to_dict("records")
    except Exception as error:  # what a build with such a cell meets
        out["zone_overlap_losers"] = f"{type(error).__name__}: {error}"
    return out


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    """Parts 2 and 3 at ``--scenes`` and at a tenth of it, each in fresh processes."""
    sizes = {"full": args.scenes, "tenth": max(1, round(args.scenes / 10))}
    out: dict[str, Any] = {}
    for name in ("tenth", "full"):
        root = Path(tempfile.mkdtemp(prefix=f"spectralearth-{name}-", dir=args.cache)) / "corpus"
        try:
            wait_for_quiet(args.wait_quiet, 10.0)
            load = system_load()
            with machine_cpu() as account:
                own = own_cpu()
                client = in_fresh_process(client_at_scale, sizes[name], args.seed, root)
                loader = in_fresh_process(loader_index, root)
                own = own_cpu() - own
            out[name] = {
                "client": client,
                "loader": loader,
                "load": {"before": load, "other_cpu_s": max(0.0, account.busy_s - own), "own_cpu_s": own},
            }
        finally:
            shutil.rmtree(root.parent, ignore_errors=True)
    out["ratios"] = scale_ratios(out["full"]["client"], out["tenth"]["client"])
    out["antimeridian_probe"] = antimeridian_probe()
    return out


def scale_ratios(full: dict[str, Any], tenth: dict[str, Any]) -> dict[str, Any]:
    """CPU s per candidate at full size over that at a tenth, per step and per timed function (1 = linear)."""
    per = full["candidates"] / tenth["candidates"]

    def ratio(a: dict[str, float], b: dict[str, float]) -> float | None:
        return a["cpu_s"] / b["cpu_s"] / per if b["cpu_s"] > 0 else None

    return {
        "size_ratio": per,
        "steps": {k: ratio(v, tenth["steps"][k]) for k, v in full["steps"].items() if k in tenth["steps"]},
        "functions": {
            k: ratio(v, tenth["functions"][k]) for k, v in full["functions"].items() if k in tenth["functions"]
        },
    }


# --- 4. extrapolation ----------------------------------------------------------------------------------


def index_cost(path: Path) -> dict[str, float]:
    """Indexing cost per product from the newest ``index_metadata.py`` row (CPU ms and bytes read)."""
    if path.exists():
        for line in reversed(path.read_text().splitlines()):
            row = json.loads(line)
            figures = row.get("index_archive", {}).get("all")
            if figures:
                return {
                    "cpu_ms": figures["cpu_ms_per_product"],
                    "rchar": figures["rchar_per_product"],
                    "source": f"{path} ({row.get('date')})",
                }
    return {"cpu_ms": 5.3, "rchar": 221e3, "source": "README figure (no results file)"}


def extrapolate(real: dict[str, Any], scale: dict[str, Any], index: dict[str, Any]) -> dict[str, Any]:
    """SpectralEarth on N single-threaded workers, from the measured per-scene, per-patch and client costs.

    Model: the worker stages are CPU-bound and split evenly over N workers: indexing (per product, from
    ``index_metadata.py``'s newest row), inspect (per scene: the mean of the measured scenes, which span
    the real sizes), materialize's window reads (per scene: a scene's kept cells span nearly all its
    rows, and DLR's strips are full-width, so a scene is read about once whatever its patch count) and
    the rest of materialize (per patch: cut, band moments, encode, write). The client's steps (part 2 at
    full size, scaled to 1,000,000 candidates) run one after another on one core while the workers
    wait. Left out: Dask's own overhead (about 1 ms of scheduler time per task, some 30,000 tasks),
    the cluster's start, and any wait for storage (the ``read_gb_s_needed`` column says what the CPU
    figures assume). Bytes read: METADATA.XML heads and tails, inspect's and materialize's ``rchar``
    per scene (a cold cache reads that much from storage; GDAL reads whole strips).
    """
    s = real["summary"]
    full = scale["full"]["client"]
    n_scenes, n_obs = SPECTRALEARTH["scenes"], SPECTRALEARTH["observations"]
    work = {
        "index": n_scenes * index["cpu_ms"] / 1e3,
        "inspect": n_scenes * s["inspect_cpu_s_per_scene"],
        "materialize_read": n_scenes * s["materialize_read_cpu_s_per_scene"],
        "materialize_rest": n_obs * s["materialize_rest_cpu_ms_per_patch"] / 1e3,
    }
    client = sum(step["cpu_s"] for step in full["steps"].values()) * SPECTRALEARTH["candidates"] / full["candidates"]
    read = {
        "index": n_scenes * index["rchar"],
        "inspect": n_scenes * s["inspect_rchar_mb_per_scene"] * MB,
        "materialize": n_scenes * s["materialize_rchar_mb_per_scene"] * MB,
    }
    written = n_obs * s["materialize_written_mb_per_patch"] * MB
    parallel = sum(work.values())
    rows = []
    for n in WORKER_COUNTS:
        wall = client + parallel / n
        rows.append(
            {
                "workers": n,
                "wall_h": wall / 3600,
                "work_core_h": (parallel + client) / 3600,
                "allocated_core_h": n * wall / 3600,
                "share": {**{k: v / n / wall for k, v in work.items()}, "client": client / wall},
                "read_gb_s_needed": sum(read.values()) / (parallel / n) / 1e9,
            }
        )
    return {
        "work_cpu_h": {k: v / 3600 for k, v in work.items()},
        "client_cpu_s": client,
        "read_tb": {k: v / 1e12 for k, v in read.items()},
        "read_tb_total": sum(read.values()) / 1e12,
        "written_tb": written / 1e12,
        "by_workers": rows,
        "index_source": index["source"],
    }


def git_commit() -> str | None:
    """The checked-out commit, with ``+dirty`` when the library code has uncommitted changes (the code timed)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "catalog", "stages", "pipeline", "training", "spectral_corpus"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# --- report --------------------------------------------------------------------------------------------


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, float):
        return round(value, 4) if abs(value) < 100 else round(value, 1)
    return value


def report(row: dict[str, Any]) -> str:
    """The results as text tables."""
    real, scale, ext = row["real_size"], row["scale"], row["extrapolation"]
    lines = [
        f"{row['date']}  {row['cpu']} x{row['cpu_count']}  load before {row['load_start']}  "
        f"{'QUICK (not for quoting)' if row['quick'] else ''}"
    ]
    lines.append("\n1. tasks at the real product size (each in a fresh process, warm page cache)")
    lines.append("scene  size (bands x rows x cols)  candidates kept  inspect wall/CPU s  rchar MB  peak RSS MB")
    for s in real["scenes"]:
        i = s["inspect"]
        lines.append(
            f"{s['scene']:<6} {'x'.join(map(str, s['layout']['shape'])):>27} {s['candidates']:>10} "
            f"{s['observations']:>4}  {i['wall_s']:.2f} / {i['cpu_s']:.2f} {i['rchar'] / MB:>9.1f}  "
            f"{i['peak_rss_mb']:.0f}"
        )
    lines.append("shard  patches scenes  wall/CPU s  read/write s  rchar MB  window MB  written MB  peak RSS MB")
    for s in real["shards"]:
        t = s["task"]
        lines.append(
            f"{s['shard']:>5} {s['n_obs']:>8} {','.join(s['scenes']):>6}  {t['wall_s']:.2f} / {t['cpu_s']:.2f}"
            f"  {s['read_seconds']:.2f} / {s['write_seconds']:.2f} {t['rchar'] / MB:>9.1f} "
            f"{s['window_raw_bytes'] / MB:>10.1f} {s['nbytes'] / MB:>11.1f}  {t['peak_rss_mb']:.0f}"
        )
    lines.append(json.dumps(_rounded(real["summary"])))
    lines.append("\n2. client steps at scale: CPU s (tenth -> full), peak RSS above start MB, CPU per candidate ratio")
    full, tenth = scale["full"]["client"], scale["tenth"]["client"]
    for size in (tenth, full):
        lines.append(
            f"  {size['scenes']} scenes, {size['candidates']} candidates -> {size['observations']} "
            f"observations at {size['locations']} locations, {size['shards']} shards; multi-date share "
            f"{size['multi_date_location_share']:.3f} x {size['dates_per_multi_date_location']:.2f} dates; "
            f"fates {size['fates']}; client peak RSS {size['client_peak_rss_mb']:.0f} MB"
        )
    for name, step in full["steps"].items():
        ratio = scale["ratios"]["steps"].get(name)
        lines.append(
            f"  {name:<58} {tenth['steps'][name]['cpu_s']:>8.2f} -> {step['cpu_s']:>8.2f}  "
            f"{step['peak_above_start_mb']:>7.0f}  {ratio if ratio is None else round(ratio, 2)}"
        )
    lines.append("  functions:")
    for name, fn in sorted(full["functions"].items(), key=lambda kv: -kv[1]["cpu_s"]):
        ratio = scale["ratios"]["functions"].get(name)
        before = tenth["functions"].get(name, {}).get("cpu_s", float("nan"))
        lines.append(
            f"  {name:<58} {before:>8.2f} -> {fn['cpu_s']:>8.2f}  x{fn['calls']:<7} "
            f"{ratio if ratio is None else round(ratio, 2)}"
        )
    lines.append(
        "\n3. loader index (train split): items, build s, RSS MB, index MB, pickle MB per worker, "
        "sampler build+len+epoch s for 1 / 512 ranks"
    )
    for name in ("tenth", "full"):
        loader = scale[name]["loader"]
        for unit in ("location", "observation"):
            e = loader[unit]
            one, many = (
                sum(e[f"sampler_{w}_ranks"][k] for k in ("build_s", "len_s", "epoch_indices_s")) for w in (1, 512)
            )
            lines.append(
                f"  {name:<5} {unit:<11} {e['items']:>7} {e['construct_wall_s']:>6.2f} {e['rss_delta_mb']:>6.1f} "
                f"{e['index_arrays_mb']:>6.1f} {e['pickle_bytes'] / MB:>6.1f}  {one:.2f} / {many:.2f}"
            )
    lines.append("\n4. SpectralEarth on N single-threaded workers")
    lines.append(
        f"  work CPU h {_rounded(ext['work_cpu_h'])}, client {ext['client_cpu_s']:.0f} s; read TB "
        f"{_rounded(ext['read_tb'])}, written TB {ext['written_tb']:.2f}"
    )
    lines.append("  N    wall h  allocated core-h  work core-h  % index/inspect/mat. read/mat. rest/client  read GB/s")
    for r in ext["by_workers"]:
        share = "/".join(f"{100 * v:.0f}" for v in r["share"].values())
        lines.append(
            f"  {r['workers']:<4} {r['wall_h']:>6.2f} {r['allocated_core_h']:>17.1f} {r['work_core_h']:>12.1f}  "
            f"{share:>42} {r['read_gb_s_needed']:>10.2f}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: one small scene, 1/10 of the scale")
    parser.add_argument("--scenes", type=int, help=f"scenes of the full-size world (default {SPECTRALEARTH['scenes']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where products and corpora go")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/spectralearth_scale.jsonl"), help="JSON lines appended here"
    )
    parser.add_argument("--wait-quiet", type=float, default=30.0, help="seconds to wait for idle CPUs before a part")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the four parts, append the row to ``--out`` and print the tables."""
    args = _parser().parse_args(argv)
    if args.scenes is None:
        args.scenes = round(SPECTRALEARTH["scenes"] / (10 if args.quick else 1))
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    row: dict[str, Any] = {
        **machine(),
        "quick": args.quick,
        "commit": git_commit(),
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", __file__, *argv]),
        "load_start": system_load(),
        "spectralearth": SPECTRALEARTH,
        "rules": RULES.as_dict(),
    }
    row["real_size"] = bench_real_size(args)
    row["scale"] = bench_scale(args)
    row["extrapolation"] = extrapolate(
        row["real_size"], row["scale"], index_cost(args.out.parent / "index_metadata.jsonl")
    )
    row["load_end"] = system_load()
    row["seconds"] = time.perf_counter() - started
    print(report(append_row(args.out, row)))
    return 0


def append_row(out: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Round the row's floats and append it to ``out`` as one JSON line; return the rounded row."""
    row = _rounded(row)
    with out.open("a") as f:
        f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    return row


if __name__ == "__main__":
    sys.exit(main())
