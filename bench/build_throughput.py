"""Build throughput benchmark: the build against the single-core limit of decode + encode on the same products.

Run from the repository root::

    python bench/build_throughput.py [--replicas 1 4] [--workers 2] [--out bench/results/build.jsonl]

For each ``--replicas`` value, on the same example products (``catalog.synth.write_example``, generated
outside the timed parts and cached in a temporary directory keyed by replicas, seed, ``--raster-format``
and generator source; by default in the example's formats, ``--raster-format GTiff`` writes every scene
as DLR's uncompressed strips):

1. the *limit*: each spectral image the corpus uses is read whole (the 202 kept bands, with
   ``rasterio``'s ``image.read(indexes=...)`` as the build does) and encoded with the corpus codec
   (``PATCH_COMPRESSOR``'s settings) as 128 x 128 patch chunks, in one process and one thread (best of
   ``--repeats``); GeoTIFF decode, codec encode, codec decode and memcpy of the same bytes are reported
   separately, and decode and limit per raster layout (stripped TIF, stripped TIF in a ZIP, deflate COG).
   The same is then measured with ``--workers`` processes at once (the *parallel limit*: what one core
   gives while every core works, as during a build);
2. the *build*: ``build_corpus`` on a local cluster of ``--workers`` single-threaded Dask workers,
   wall time from catalog to commit (cluster start included), per stage, and the materialize tasks'
   own ``read_seconds + write_seconds`` from ``shards.parquet``;
3. the lossless compression ratio of the written shards (``corpus_summary``);
4. the peak memory of a worker: ``peak_rss_mb`` of the shard tasks and the RSS of the worker processes
   sampled while the build runs.

The page cache is warm for both the limit and the build: every file of the archive is read once
right before each is timed. Throughput is in MB (10^6 bytes) of raw int16 per second per core; the
headline figures divide the raw size of the 202-band images of every used scene (full image area)
by the time, as the limit does. Other jobs on the machine skew every figure: before each timed part
the script waits (up to ``--wait-quiet`` seconds) for idle CPUs, and it records the CPU seconds other
processes used while the build and the limits ran. One JSON line per replicas value is appended to
``--out``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.blosc
import numpy as np
import pandas as pd
import psutil
import rasterio
from machine_load import wait_for_quiet

import spectral_corpus.pipeline.build as build_module
from spectral_corpus.catalog import synth as catalog_synth
from spectral_corpus.catalog.bands import selected_bands
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rasters import RASTER_FORMATS
from spectral_corpus.catalog.scenes import OK
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.pipeline.info import corpus_summary
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.grid import PATCH_PX
from spectral_corpus.stages.rules import Rules
from spectral_corpus.stages.store import PATCH_COMPRESSOR

MB = 1e6
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "spectral-corpus-bench"
#: pipeline.build functions timed as build stages (looked up by name at call time, so wrapping works).
STAGES = ("_catalog", "_inspect", "_plan", "create_patch_array", "_materialize", "_moments", "_commit")
VERSIONED = ("numpy", "zarr", "numcodecs", "rasterio", "dask", "distributed", "pandas", "spectral-corpus")


# --- products and page cache -----------------------------------------------------------------------


def generator_key() -> str:
    """A short hash of the example generator's source: a cached archive is reused only if it is unchanged."""
    return hashlib.sha256(Path(catalog_synth.__file__).read_bytes()).hexdigest()[:12]


def cached_products(cache: Path, replicas: int, seed: int = 0, raster_format: str | None = None) -> tuple[Path, float]:
    """The archive of ``write_example(seed, replicas)`` under ``cache``, and the seconds spent generating it.

    ``raster_format`` writes every scene in that format (``catalog.rasters.RASTER_FORMATS``); by default
    the example's own formats (DLR's uncompressed GeoTIFF strips, scene B as a deflate COG).
    """
    formats = None if raster_format is None else {p.label: raster_format for p in catalog_synth.scenario(replicas)}
    suffix = "" if raster_format is None else f"-{raster_format}"
    root = cache / f"products-r{replicas}-s{seed}{suffix}-{generator_key()}"
    done = root / "COMPLETE"
    if done.exists():
        return root / "archive", 0.0
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    example = catalog_synth.write_example(root, seed=seed, replicas=replicas, raster_formats=formats)
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"products": len(example.products), "seconds": seconds}))
    return example.archive, seconds


def warm_page_cache(folder: Path) -> int:
    """Read every file under ``folder`` once (8 MiB blocks); return the bytes read."""
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            while block := f.read(1 << 23):
                total += len(block)
    return total


def cached_corpus(cache: Path, replicas: int, seed: int = 0, workers: int = 2) -> Path:
    """A corpus built (once, default rules) from the cached products of ``replicas``, for the other benchmarks.

    It is keyed like the products only: remove ``cache`` after changing how the build lays out a corpus.
    """
    archive, _ = cached_products(cache, replicas, seed)
    corpus = archive.parent / "corpus"
    if not (corpus / "CURRENT").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        build_corpus(
            BuildOptions(source=str(archive), out=corpus, query=SceneQuery(), rules=Rules(), workers=workers)
        )
    return corpus


# --- the limit: decode + encode of whole images in one thread ------------------------------------


def patch_codec() -> numcodecs.Blosc:
    """The numcodecs Blosc codec with ``PATCH_COMPRESSOR``'s settings (what zarr calls per inner chunk)."""
    shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE}.get(
        PATCH_COMPRESSOR.shuffle.value, numcodecs.Blosc.BITSHUFFLE
    )
    return numcodecs.Blosc(
        cname=PATCH_COMPRESSOR.cname.value,
        clevel=PATCH_COMPRESSOR.clevel,
        shuffle=shuffle,
        blocksize=PATCH_COMPRESSOR.blocksize,
        typesize=PATCH_COMPRESSOR.typesize,
    )


def patch_chunks(image: np.ndarray) -> Iterator[np.ndarray]:
    """Contiguous (band, 128, 128) chunks tiling a (band, y, x) image; edge chunks are smaller, not padded."""
    for y in range(0, image.shape[1], PATCH_PX):
        for x in range(0, image.shape[2], PATCH_PX):
            yield np.ascontiguousarray(image[:, y : y + PATCH_PX, x : x + PATCH_PX])


@dataclass
class ImageTimes:
    """Seconds spent on one image, per phase, and the encoded size."""

    raw_bytes: int
    decode_tiff: float
    encode: float
    decode_codec: float
    memcpy: float
    encoded_bytes: int


def read_image(href: str, bands: Sequence[int]) -> tuple[np.ndarray, float]:
    """The whole image's ``bands``, read as the build reads a window, and the seconds it took."""
    started = time.perf_counter()
    with rasterio.open(href) as image:
        array = image.read(indexes=list(bands))
    return array, time.perf_counter() - started


def time_image(href: str, bands: Sequence[int], codec: numcodecs.Blosc) -> ImageTimes:
    """Decode one GeoTIFF, encode it as patch chunks, decode those, and memcpy it, timing each."""
    image, decode_tiff = read_image(href, bands)
    started = time.perf_counter()
    encoded = [codec.encode(chunk) for chunk in patch_chunks(image)]
    encode = time.perf_counter() - started
    started = time.perf_counter()
    for blob in encoded:
        codec.decode(blob)
    decode_codec = time.perf_counter() - started
    target = np.ones_like(image)  # touched, so the copy does not pay for page faults
    started = time.perf_counter()
    np.copyto(target, image)
    memcpy = time.perf_counter() - started
    nbytes = sum(len(blob) for blob in encoded)
    return ImageTimes(image.nbytes, decode_tiff, encode, decode_codec, memcpy, nbytes)


@dataclass
class Limit:
    """Single-thread speeds on the used images (best over repeats of the summed seconds)."""

    images: int
    raw_mb: float
    repeats: int
    decode_tiff_s: float
    encode_s: float
    decode_codec_s: float
    memcpy_s: float
    codec_ratio: float
    #: The same per raster layout (``image_layout``): images, raw MB, decode and encode s, MB/s.
    by_layout: dict[str, dict[str, float]] = field(default_factory=dict)
    limit_mb_s: float = field(init=False)
    decode_tiff_mb_s: float = field(init=False)
    encode_mb_s: float = field(init=False)
    decode_codec_mb_s: float = field(init=False)
    memcpy_mb_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.limit_mb_s = self.raw_mb / (self.decode_tiff_s + self.encode_s)
        self.decode_tiff_mb_s = self.raw_mb / self.decode_tiff_s
        self.encode_mb_s = self.raw_mb / self.encode_s
        self.decode_codec_mb_s = self.raw_mb / self.decode_codec_s
        self.memcpy_mb_s = self.raw_mb / self.memcpy_s

    @classmethod
    def combine(cls, parts: Sequence[Limit]) -> Limit:
        """Several processes' limits as one: MB and seconds summed, so speeds are per busy core."""
        raw = sum(p.raw_mb for p in parts)
        return cls(
            images=sum(p.images for p in parts),
            raw_mb=raw,
            repeats=parts[0].repeats,
            decode_tiff_s=sum(p.decode_tiff_s for p in parts),
            encode_s=sum(p.encode_s for p in parts),
            decode_codec_s=sum(p.decode_codec_s for p in parts),
            memcpy_s=sum(p.memcpy_s for p in parts),
            codec_ratio=sum(p.codec_ratio * p.raw_mb for p in parts) / raw,
            by_layout=layout_speeds(
                {
                    layout: {k: sum(p.by_layout.get(layout, {}).get(k, 0.0) for p in parts) for k in _LAYOUT_SUMS}
                    for layout in sorted({layout for p in parts for layout in p.by_layout})
                }
            ),
        )


@contextmanager
def single_threaded_blosc() -> Iterator[None]:
    """Blosc without its internal threads (it uses them by default when called from the main thread)."""
    before = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = before


def image_layout(href: str) -> str:
    """How an image is stored, from its href: ``cog`` (``_COG.TIF``), ``zip`` (``/vsizip/``) or ``file``."""
    return "cog" if href.upper().endswith("_COG.TIF") else "zip" if href.startswith("/vsizip/") else "file"


_LAYOUT_SUMS = ("images", "raw_mb", "block_mb", "decode_tiff_s", "encode_s")


def layout_speeds(sums: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-layout sums with their speeds (MB/s) added: decode (of the image, and of the TIFF blocks) and limit."""
    return {
        layout: {**v, "decode_tiff_mb_s": v["raw_mb"] / v["decode_tiff_s"],
                 "decode_block_mb_s": v["block_mb"] / v["decode_tiff_s"],
                 "limit_mb_s": v["raw_mb"] / (v["decode_tiff_s"] + v["encode_s"])}
        for layout, v in sums.items()
    }  # fmt: skip


def measure_limit(hrefs: Sequence[str], bands: Sequence[int], repeats: int) -> Limit:
    """Time decode + encode of every image ``repeats`` times, single thread; keep the best of each phase.

    The best (not the median) because a limit is what the machine can do; other jobs only add time.
    """
    codec = patch_codec()
    runs: list[list[ImageTimes]] = []
    with single_threaded_blosc():
        for _ in range(repeats):
            runs.append([time_image(href, bands, codec) for href in hrefs])
            gc.collect()

    def best(phase: str) -> float:
        return min(sum(getattr(t, phase) for t in run) for run in runs)

    raw = sum(t.raw_bytes for t in runs[0])
    sums: dict[str, dict[str, float]] = {}
    for i, href in enumerate(hrefs):  # each image's best time over the repeats
        part = sums.setdefault(image_layout(href), dict.fromkeys(_LAYOUT_SUMS, 0.0))
        part["images"] += 1
        part["raw_mb"] += runs[0][i].raw_bytes / MB
        part["block_mb"] += image_block_bytes(href, len(bands)) / MB
        part["decode_tiff_s"] += min(run[i].decode_tiff for run in runs)
        part["encode_s"] += min(run[i].encode for run in runs)
    return Limit(
        images=len(hrefs),
        raw_mb=raw / MB,
        repeats=repeats,
        decode_tiff_s=best("decode_tiff"),
        encode_s=best("encode"),
        decode_codec_s=best("decode_codec"),
        memcpy_s=best("memcpy"),
        codec_ratio=sum(t.encoded_bytes for t in runs[0]) / raw,
        by_layout=layout_speeds(sums),
    )


def measure_parallel_limit(hrefs: Sequence[str], bands: Sequence[int], repeats: int, processes: int) -> Limit:
    """The limit with ``processes`` single-threaded processes at once, each on its share of the images.

    What one core delivers while every core works, as during a build: shared caches, memory bandwidth
    and the hypervisor's scheduling of the virtual CPUs count here and not in the one-process limit.
    """
    shares = [list(hrefs[i::processes]) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        list(pool.map(measure_limit, [[share[0]] for share in shares], [bands] * processes, [1] * processes))
        parts = list(pool.map(measure_limit, shares, [bands] * processes, [repeats] * processes))
    return Limit.combine(parts)


@dataclass
class CpuAccount:
    """CPU seconds of the whole machine while something ran: busy (all processes) and stolen by the hypervisor."""

    busy_s: float = 0.0
    steal_s: float = 0.0


def _cpu_now() -> tuple[float, float]:
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


@contextmanager
def machine_cpu() -> Iterator[CpuAccount]:
    """Account the machine's busy and stolen CPU seconds over the block."""
    account = CpuAccount()
    busy, steal = _cpu_now()
    try:
        yield account
    finally:
        busy_after, steal_after = _cpu_now()
        account.busy_s, account.steal_s = busy_after - busy, steal_after - steal


def own_cpu() -> float:
    """CPU seconds of this process and its children that have been waited for."""
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


# --- the build: stage timings and worker sampling ------------------------------------------------


class WorkerSampler(threading.Thread):
    """Samples RSS and CPU time of this process's child processes (the Dask workers), and the RSS of this
    process (the client), until stopped.

    The list of children is refreshed once a second and the samples read only ``/proc/<pid>/stat`` and
    ``statm``, so the sampler costs about 2 % of a core, not the 10 % a full scan every 20 ms costs.
    """

    def __init__(self, interval: float = 0.05, rescan: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.rescan = interval, rescan
        self.peak_rss: dict[int, int] = {}
        self.cpu_seconds: dict[int, float] = {}
        self.client_rss_before = self.client_peak_rss = psutil.Process().memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        me, children, scanned = psutil.Process(), [], 0.0
        while not self._stop_event.wait(self.interval):
            if time.monotonic() - scanned > self.rescan:
                children, scanned = me.children(recursive=True), time.monotonic()
            for child in children:
                self._sample(child)
            self.client_peak_rss = max(self.client_peak_rss, me.memory_info().rss)

    def _sample(self, child: psutil.Process) -> None:
        try:
            rss, cpu = child.memory_info().rss, child.cpu_times()
        except psutil.Error:
            return  # exited since the last scan
        self.peak_rss[child.pid] = max(rss, self.peak_rss.get(child.pid, 0))
        self.cpu_seconds[child.pid] = cpu.user + cpu.system

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        self.join()


def _timed(name: str, fn: Callable[..., Any], times: dict[str, float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - started

    return wrapper


@contextmanager
def stage_timer(times: dict[str, float]) -> Iterator[None]:
    """Time ``pipeline.build``'s stages (and the cluster's start and stop) while the block runs."""
    present = [name for name in STAGES if hasattr(build_module, name)]  # the build's stages change over time
    originals = {name: getattr(build_module, name) for name in (*present, "dask_client")}
    client_factory = originals["dask_client"]

    @contextmanager
    def timed_client(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        with client_factory(*args, **kwargs) as client:
            times["cluster_start"] = time.perf_counter() - started
            yield client
            stopping = time.perf_counter()
        times["cluster_stop"] = time.perf_counter() - stopping

    for name in present:
        setattr(build_module, name, _timed(name.lstrip("_"), originals[name], times))
    build_module.dask_client = timed_client
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(build_module, name, fn)


@dataclass
class BuildRun:
    """Wall and stage seconds of one build, and what its worker processes used."""

    wall_s: float
    stages_s: dict[str, float]
    main_cpu_s: float
    worker_cpu_s: float
    worker_peak_rss_mb: float
    worker_processes: int
    client_rss_before_mb: float
    client_peak_rss_mb: float
    machine_busy_cpu_s: float
    machine_steal_cpu_s: float


def run_build(archive: Path, out: Path, workers: int, rules: Rules) -> BuildRun:
    """Build a corpus from ``archive`` into ``out`` (which must not exist), timing it."""
    times: dict[str, float] = {}
    options = BuildOptions(
        source=str(archive), out=out, query=SceneQuery(), rules=rules, workers=workers
    )
    sampler = WorkerSampler()
    main_cpu = psutil.Process().cpu_times()
    sampler.start()
    try:
        with stage_timer(times), machine_cpu() as account:
            started = time.perf_counter()
            build_corpus(options)
            wall = time.perf_counter() - started
    finally:
        sampler.stop()
    cpu = psutil.Process().cpu_times()
    return BuildRun(
        wall_s=wall,
        stages_s=times,
        machine_busy_cpu_s=account.busy_s,
        machine_steal_cpu_s=account.steal_s,
        main_cpu_s=(cpu.user + cpu.system) - (main_cpu.user + main_cpu.system),
        worker_cpu_s=sum(sampler.cpu_seconds.values()),
        worker_peak_rss_mb=max(sampler.peak_rss.values(), default=0) / 2**20,
        worker_processes=len(sampler.peak_rss),
        client_rss_before_mb=sampler.client_rss_before / 2**20,
        client_peak_rss_mb=sampler.client_peak_rss / 2**20,
    )


# --- what the corpus holds ---------------------------------------------------------------------


def used_images(reader: CorpusReader) -> dict[str, str]:
    """Spectral image href by product of the corpus's status-ok scenes, in product order."""
    scenes = reader.table("scenes").sort_values("product")
    ok = scenes[scenes["status"] == OK]
    return {product: dict(assets)["image"] for product, assets in zip(ok["product"], ok["assets"], strict=True)}


def shard_windows(observations: pd.DataFrame) -> pd.DataFrame:
    """The bounding window (row0, col0, height, width) each materialize task reads, per (shard, product)."""
    spans = observations.groupby(["shard", "product"]).agg(
        row0=("row", "min"), row1=("row", "max"), col0=("col", "min"), col1=("col", "max")
    )
    return pd.DataFrame(
        {
            "row0": spans["row0"],
            "col0": spans["col0"],
            "height": spans["row1"] - spans["row0"] + PATCH_PX,
            "width": spans["col1"] - spans["col0"] + PATCH_PX,
        }
    ).reset_index()


def _block_span(start: int, size: int, block: int, limit: int) -> int:
    """Pixels of the whole blocks that cover [start, start + size), clipped to ``limit``."""
    first, last = start // block * block, -(-(start + size) // block) * block
    return min(last, limit) - first


def _block_bytes(image: rasterio.DatasetReader, spans: Sequence[tuple[int, int, int, int]], n_bands: int) -> int:
    """Bytes GDAL decodes to read ``n_bands`` bands of the (row0, col0, height, width) windows of ``image``.

    Every TIFF block a window touches is decoded whole. Strips (full rows; the last one is short) are
    clipped to the image; tiles are not (edge tiles are stored padded to full size). A pixel-interleaved
    block holds every band, so all bands are decoded.
    """
    block_y, block_x = image.block_shapes[0]
    tiled = block_x < image.width or bool(image.profile.get("tiled"))
    height, width = (2**31, 2**31) if tiled else (image.height, image.width)
    pixel_interleaved = image.interleaving is not None and image.interleaving.name == "pixel"
    per_pixel = (image.count if pixel_interleaved else n_bands) * np.dtype(image.dtypes[0]).itemsize
    return per_pixel * sum(
        _block_span(row0, rows, block_y, height) * _block_span(col0, cols, block_x, width)
        for row0, col0, rows, cols in spans
    )


def decoded_bytes(windows: pd.DataFrame, hrefs: dict[str, str], n_bands: int) -> dict[str, int]:
    """Bytes GDAL decodes for the windows' ``n_bands`` bands, per raster layout (``image_layout``)."""
    totals: dict[str, int] = {}
    for product, group in windows.groupby("product"):
        href = hrefs[str(product)]
        spans = [(int(w.row0), int(w.col0), int(w.height), int(w.width)) for w in group.itertuples()]
        with rasterio.open(href) as image:
            layout = image_layout(href)
            totals[layout] = totals.get(layout, 0) + _block_bytes(image, spans, n_bands)
    return totals


def image_block_bytes(href: str, n_bands: int) -> int:
    """Bytes GDAL decodes to read ``n_bands`` bands of the whole image (see ``_block_bytes``)."""
    with rasterio.open(href) as image:
        return _block_bytes(image, [(0, 0, image.height, image.width)], n_bands)


# --- one benchmark run -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where and with what software a benchmark ran."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in VERSIONED},
        "gdal": rasterio.__gdal_version__,
        "gdal_num_threads": os.environ.get("GDAL_NUM_THREADS"),
    }


def environment(workers: int, shard_size: int) -> dict[str, Any]:
    """The context recorded with every build result."""
    return {
        **machine(),
        "workers": workers,
        "threads_per_worker": 1,
        "shard_size": shard_size,
        "codec": PATCH_COMPRESSOR.to_dict(),
        "page_cache": "warm (every archive file read once before the limit and before the build)",
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


@dataclass
class CorpusFacts:
    """What the built corpus holds and what its materialize tasks had to read."""

    summary: dict[str, Any]
    shards: pd.DataFrame
    hrefs: dict[str, str]
    windows: int
    window_bytes: int
    decoded_bytes: int
    decoded_by_layout: dict[str, int]

    @classmethod
    def of(cls, corpus: Path, n_bands: int) -> CorpusFacts:
        """Read the published corpus's summary and tables."""
        reader = CorpusReader(corpus)
        hrefs = used_images(reader)
        windows = shard_windows(reader.table("observations"))
        decoded = decoded_bytes(windows, hrefs, n_bands)
        pixels = int((windows["height"] * windows["width"]).sum())
        return cls(
            summary=corpus_summary(reader),
            shards=reader.table("shards"),
            hrefs=hrefs,
            windows=len(windows),
            window_bytes=pixels * n_bands * 2,
            decoded_bytes=sum(decoded.values()),
            decoded_by_layout=decoded,
        )


@dataclass
class Limits:
    """The limit in one process, the limit with every worker's process at once, and others' CPU meanwhile."""

    single: Limit
    parallel: Limit
    other_cpu_s: float
    steal_cpu_s: float


def measure_limits(hrefs: Sequence[str], bands: Sequence[int], args: argparse.Namespace) -> Limits:
    """Both limits on the same images, accounting the CPU that other processes used meanwhile."""
    own = own_cpu()
    with machine_cpu() as account:
        single = measure_limit(hrefs, bands, args.repeats)
        parallel = measure_parallel_limit(hrefs, bands, args.repeats, args.workers)
    return Limits(single, parallel, account.busy_s - (own_cpu() - own), account.steal_s)


def bench_replicas(replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the products, build them, measure the limit on the used images; one result row."""
    archive, generated_s = cached_products(args.cache, replicas, args.seed, args.raster_format)
    rules = Rules(shard_size=args.shard_size)
    bands = [int(b) for b in selected_bands(rules.bands)]
    out = Path(tempfile.mkdtemp(prefix=f"corpus-r{replicas}-", dir=args.cache)) / "corpus"
    try:
        warm_page_cache(archive)
        load = {"before_build": wait_for_quiet(args.wait_quiet, 10.0)}
        build = run_build(archive, out, args.workers, rules)
        os.sync()  # the shards' write-back must not overlap the limit's timing
        facts = CorpusFacts.of(out, len(bands))
        warm_page_cache(archive)
        load["before_limit"] = wait_for_quiet(args.wait_quiet, 10.0)
        limits = measure_limits(list(facts.hrefs.values()), bands, args)
    finally:
        if not args.keep:
            shutil.rmtree(out.parent, ignore_errors=True)
    own_build_cpu = build.main_cpu_s + build.worker_cpu_s
    load["other_cpu_s_during_build"] = {"busy": build.machine_busy_cpu_s - own_build_cpu,
                                        "steal": build.machine_steal_cpu_s}  # fmt: skip
    load["other_cpu_s_during_limit"] = {"busy": limits.other_cpu_s, "steal": limits.steal_cpu_s}
    row = {
        **environment(args.workers, args.shard_size),
        "replicas": replicas,
        "raster_format": args.raster_format or "example (GTiff strips, scene B COG)",
        "products_generated_s": generated_s,
        "load": load,
    }
    return _rounded({**row, **figures(limits, build, facts, args.workers)})


def figures(limits: Limits, build: BuildRun, facts: CorpusFacts, workers: int) -> dict[str, Any]:
    """All figures of one run as a JSON-ready dict."""
    limit, shards = limits.single, facts.shards
    read_s, write_s = float(shards["read_seconds"].sum()), float(shards["write_seconds"].sum())
    written_mb, decoded_mb = float(shards["raw_bytes"].sum()) / MB, facts.decoded_bytes / MB
    build_mb_s = limit.raw_mb / (build.wall_s * workers)
    task_mb_s = limit.raw_mb / (read_s + write_s)
    at_limit_s = written_mb / limit.encode_mb_s + sum(  # each layout's blocks at its own decode speed
        nbytes / MB / limit.by_layout.get(layout, {}).get("decode_block_mb_s", limit.decode_tiff_mb_s)
        for layout, nbytes in facts.decoded_by_layout.items()
    )
    return {
        "scenes": facts.summary["scenes"],
        "observations": facts.summary["observations"],
        "shards": facts.summary["shards"],
        "shard_scene_windows": facts.windows,
        "scene_raw_mb": limit.raw_mb,
        "window_raw_mb": facts.window_bytes / MB,
        "decoded_raw_mb": decoded_mb,
        "decoded_raw_mb_by_layout": {layout: nbytes / MB for layout, nbytes in facts.decoded_by_layout.items()},
        "written_raw_mb": written_mb,
        "limit": asdict(limit),
        "limit_parallel": asdict(limits.parallel),
        "build": {
            **asdict(build),
            "materialize_read_s": read_s,
            "materialize_write_s": write_s,
            "per_core_mb_s": build_mb_s,
            "ratio_to_limit": build_mb_s / limit.limit_mb_s,
            "ratio_to_parallel_limit": build_mb_s / limits.parallel.limit_mb_s,
            "materialize_per_core_mb_s": task_mb_s,
            "materialize_ratio_to_limit": task_mb_s / limit.limit_mb_s,
            "materialize_ratio_to_parallel_limit": task_mb_s / limits.parallel.limit_mb_s,
            "written_per_core_mb_s": written_mb / (build.wall_s * workers),
            "materialize_read_decoded_mb_s": decoded_mb / read_s,
            "materialize_write_mb_s": written_mb / write_s,
            "materialize_at_limit_s": at_limit_s,
            "materialize_efficiency": at_limit_s / (read_s + write_s),
        },
        "compression": {"bytes_on_disk": facts.summary["bytes_on_disk"], "ratio": facts.summary["compression_ratio"]},
        "memory": {
            "task_peak_rss_mb": float(shards["peak_rss_mb"].max()),
            "sampled_worker_peak_rss_mb": build.worker_peak_rss_mb,
            "client_rss_before_mb": build.client_rss_before_mb,
            "client_peak_rss_mb": build.client_peak_rss_mb,
        },
    }


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    """Floats rounded to 3 decimals, in nested dicts too."""
    return {k: _rounded(v) if isinstance(v, dict) else _round(v) for k, v in values.items()}


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


# --- report ------------------------------------------------------------------------------------

Row = dict[str, Any]


def _pair(first: Any, second: Any) -> str:
    return f"{first} / {second}"


def _by_layout(row: Row, layout: str) -> str:
    """Decode / limit MB/s of one raster layout's images, with their count; "-" when the run had none."""
    part = row["limit"].get("by_layout", {}).get(layout)
    if part is None:
        return "-"
    return f"{part['decode_tiff_mb_s']:.0f} / {part['limit_mb_s']:.1f} ({part['images']:.0f})"


TABLE: tuple[tuple[str, Callable[[Row], Any]], ...] = (
    ("replicas", lambda r: r["replicas"]),
    ("used scenes / observations / shards", lambda r: f"{r['scenes']['used']} / {r['observations']} / {r['shards']}"),
    ("raw MB: scene area (S) / written", lambda r: _pair(r["scene_raw_mb"], r["written_raw_mb"])),
    ("raw MB: task windows / decoded blocks", lambda r: _pair(r["window_raw_mb"], r["decoded_raw_mb"])),
    ("limit MB/s/core: S / (decode + encode)", lambda r: r["limit"]["limit_mb_s"]),
    ("  GeoTIFF decode MB/s", lambda r: r["limit"]["decode_tiff_mb_s"]),
    ("  codec encode MB/s", lambda r: r["limit"]["encode_mb_s"]),
    ("  codec decode MB/s", lambda r: r["limit"]["decode_codec_mb_s"]),
    ("  memcpy MB/s", lambda r: r["limit"]["memcpy_mb_s"]),
    ("  decode / limit MB/s (images): strip TIF", lambda r: _by_layout(r, "file")),
    ("    strip TIF in stored ZIP", lambda r: _by_layout(r, "zip")),
    ("    deflate COG", lambda r: _by_layout(r, "cog")),
    ("limit, all workers' processes at once", lambda r: r["limit_parallel"]["limit_mb_s"]),
    ("  GeoTIFF decode / codec encode MB/s", lambda r: _pair(r["limit_parallel"]["decode_tiff_mb_s"],
                                                            r["limit_parallel"]["encode_mb_s"])),
    ("build wall s", lambda r: r["build"]["wall_s"]),
    ("build MB/s/core: S / (wall x workers)", lambda r: r["build"]["per_core_mb_s"]),
    ("  build / limit (target >= 0.5)", lambda r: r["build"]["ratio_to_limit"]),
    ("  build / parallel limit", lambda r: r["build"]["ratio_to_parallel_limit"]),
    ("materialize task s: read + write", lambda r: f"{r['build']['materialize_read_s']} + "
     f"{r['build']['materialize_write_s']}"),
    ("materialize MB/s/core: S / task s", lambda r: r["build"]["materialize_per_core_mb_s"]),
    ("  materialize / limit, / parallel limit", lambda r: _pair(r["build"]["materialize_ratio_to_limit"],
                                                               r["build"]["materialize_ratio_to_parallel_limit"])),
    ("  task decode MB/s (blocks) / write MB/s", lambda r: _pair(r["build"]["materialize_read_decoded_mb_s"],
                                                             r["build"]["materialize_write_mb_s"])),
    ("  task s at limit speeds / efficiency", lambda r: _pair(r["build"]["materialize_at_limit_s"],
                                                             r["build"]["materialize_efficiency"])),
    ("worker CPU s / client+scheduler CPU s", lambda r: _pair(r["build"]["worker_cpu_s"], r["build"]["main_cpu_s"])),
    ("compression ratio (target <= 0.6)", lambda r: r["compression"]["ratio"]),
    ("  codec ratio on whole images", lambda r: r["limit"]["codec_ratio"]),
    ("other load: CPU busy % before build / limit", lambda r: _pair(r["load"]["before_build"]["cpu_busy_pct"],
                                                                   r["load"]["before_limit"]["cpu_busy_pct"])),
    ("other processes' CPU s during build / limits", lambda r: _pair(r["load"]["other_cpu_s_during_build"]["busy"],
                                                                    r["load"]["other_cpu_s_during_limit"]["busy"])),
    ("peak RSS MB: task / sampled worker", lambda r: _pair(r["memory"]["task_peak_rss_mb"],
                                                          r["memory"]["sampled_worker_peak_rss_mb"])),
    ("client RSS MB: before / peak during the build", lambda r: _pair(r["memory"]["client_rss_before_mb"],
                                                                      r["memory"]["client_peak_rss_mb"])),
)  # fmt: skip


def stage_lines(rows: Sequence[Row]) -> list[str]:
    """One line per run: seconds of each build stage."""
    return [
        f"replicas {r['replicas']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["build"]["stages_s"].items())
        for r in rows
    ]


def format_table(rows: Sequence[Row]) -> str:
    """The results as an aligned text table, one column per run, then the stage seconds."""
    width = max(len(label) for label, _ in TABLE)
    head = rows[0]
    title = (
        f"{head['date']}  {head['cpu']} x{head['cpu_count']}  workers {head['workers']}  shard size "
        f"{head['shard_size']}  zarr {head['versions']['zarr']}  numcodecs {head['versions']['numcodecs']}  rasters "
        f"{head.get('raster_format', 'example')}"
    )
    lines = [f"{label:<{width}}  " + "  ".join(f"{cell(row)!s:>17}" for row in rows) for label, cell in TABLE]
    return "\n".join([title, *lines, "build stages (s):", *stage_lines(rows)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4], help="input sizes (default: 1 4)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers, one thread each (default: 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/build.jsonl"), help="JSON lines appended here")
    parser.add_argument("--shard-size", type=int, default=Rules().shard_size)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the limit measurement (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--raster-format", choices=RASTER_FORMATS, help="write every scene in this format (default: the example's)"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where products and corpora go")
    parser.add_argument("--keep", action="store_true", help="keep the built corpora (under --cache)")
    parser.add_argument(
        "--wait-quiet", type=float, default=30.0, help="seconds to wait for idle CPUs before each timed part"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark for each replicas value, append the rows to ``--out`` and print the table."""
    args = _parser().parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for replicas in args.replicas:
        row = bench_replicas(replicas, args)
        with args.out.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        rows.append(row)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
