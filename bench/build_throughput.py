"""Build throughput benchmark: the build against the single-core limit of decode + encode on the same products.

Run from the repository root::

    python bench/build_throughput.py [--replicas 1 4] [--workers 2] [--out bench/results/build.jsonl]

For each ``--replicas`` value, on the same example products (``catalog.synth.write_example``, generated
outside the timed parts and cached in a temporary directory keyed by replicas, seed and generator
source):

1. the *limit*: each spectral image the corpus uses is read whole (the 202 kept bands, with
   ``rasterio``'s ``image.read(indexes=...)`` as the build does) and encoded with the corpus codec
   (``PATCH_COMPRESSOR``'s settings) as 128 x 128 patch chunks, in one process and one thread;
   GeoTIFF decode, codec encode, codec decode and memcpy of the same bytes are reported separately;
2. the *build*: ``build_corpus`` on a local cluster of ``--workers`` single-threaded Dask workers,
   wall time from catalog to commit (cluster start included), per stage, and the materialize tasks'
   own ``read_seconds + write_seconds`` from ``shards.parquet``;
3. the lossless compression ratio of the written shards (``corpus_summary``);
4. the peak memory of a worker: ``peak_rss_mb`` of the shard tasks and the RSS of the worker processes
   sampled while the build runs.

The page cache is warm for both the limit and the build: every file of the archive is read once
right before each is timed. Throughput is in MB (10^6 bytes) of raw int16 per second per core; the
headline figures divide the raw size of the 202-band images of every used scene (full image area)
by the time, as the limit does. One JSON line per replicas value is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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

import catalog.synth
import pipeline.build as build_module
from catalog.bands import selected_bands
from catalog.query import SceneQuery
from catalog.scenes import OK
from pipeline.build import BuildOptions, build_corpus
from pipeline.info import corpus_summary
from pipeline.reader import CorpusReader
from stages.grid import PATCH_PX
from stages.rules import Rules
from stages.store import PATCH_COMPRESSOR

MB = 1e6
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "spectral-corpus-bench"
#: pipeline.build functions timed as build stages (looked up by name at call time, so wrapping works).
STAGES = ("_catalog", "_inspect", "_plan", "create_patch_array", "_materialize", "_commit")
VERSIONED = ("numpy", "zarr", "numcodecs", "rasterio", "dask", "distributed", "pandas", "spectral-corpus")


# --- products and page cache -----------------------------------------------------------------------


def generator_key() -> str:
    """A short hash of the example generator's source: a cached archive is reused only if it is unchanged."""
    return hashlib.sha256(Path(catalog.synth.__file__).read_bytes()).hexdigest()[:12]


def cached_products(cache: Path, replicas: int, seed: int = 0) -> tuple[Path, float]:
    """The archive of ``write_example(seed, replicas)`` under ``cache``, and the seconds spent generating it."""
    root = cache / f"products-r{replicas}-s{seed}-{generator_key()}"
    done = root / "COMPLETE"
    if done.exists():
        return root / "archive", 0.0
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    example = catalog.synth.write_example(root, seed=seed, replicas=replicas)
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
    """Single-thread speeds on the used images (median over repeats of the summed seconds)."""

    images: int
    raw_mb: float
    repeats: int
    decode_tiff_s: float
    encode_s: float
    decode_codec_s: float
    memcpy_s: float
    codec_ratio: float
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


@contextmanager
def single_threaded_blosc() -> Iterator[None]:
    """Blosc without its internal threads (it uses them by default when called from the main thread)."""
    before = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = before


def measure_limit(hrefs: Sequence[str], bands: Sequence[int], repeats: int) -> Limit:
    """Time decode + encode of every image ``repeats`` times, single thread; keep the median of each phase."""
    codec = patch_codec()
    runs: list[list[ImageTimes]] = []
    with single_threaded_blosc():
        for _ in range(repeats):
            runs.append([time_image(href, bands, codec) for href in hrefs])
            gc.collect()

    def median(phase: str) -> float:
        return statistics.median(sum(getattr(t, phase) for t in run) for run in runs)

    raw = sum(t.raw_bytes for t in runs[0])
    return Limit(
        images=len(hrefs),
        raw_mb=raw / MB,
        repeats=repeats,
        decode_tiff_s=median("decode_tiff"),
        encode_s=median("encode"),
        decode_codec_s=median("decode_codec"),
        memcpy_s=median("memcpy"),
        codec_ratio=sum(t.encoded_bytes for t in runs[0]) / raw,
    )


# --- the build: stage timings and worker sampling ------------------------------------------------


class WorkerSampler(threading.Thread):
    """Samples RSS and CPU time of this process's child processes (the Dask workers) until stopped."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_rss: dict[int, int] = {}
        self.cpu_seconds: dict[int, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_event.wait(self.interval):
            for child in me.children(recursive=True):
                self._sample(child)

    def _sample(self, child: psutil.Process) -> None:
        try:
            with child.oneshot():
                rss, cpu = child.memory_info().rss, child.cpu_times()
        except psutil.Error:
            return  # exited between listing and sampling
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
    originals = {name: getattr(build_module, name) for name in (*STAGES, "dask_client")}
    client_factory = originals["dask_client"]

    @contextmanager
    def timed_client(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        with client_factory(*args, **kwargs) as client:
            times["cluster_start"] = time.perf_counter() - started
            yield client
            stopping = time.perf_counter()
        times["cluster_stop"] = time.perf_counter() - stopping

    for name in STAGES:
        setattr(build_module, name, _timed(name.lstrip("_"), originals[name], times))
    build_module.dask_client = timed_client  # type: ignore[assignment]
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


def run_build(archive: Path, out: Path, workers: int, rules: Rules) -> BuildRun:
    """Build a corpus from ``archive`` into ``out`` (which must not exist), timing it."""
    times: dict[str, float] = {}
    options = BuildOptions(source=str(archive), out=out, query=SceneQuery(), rules=rules, workers=workers, progress=False)
    sampler = WorkerSampler()
    main_cpu = psutil.Process().cpu_times()
    sampler.start()
    try:
        with stage_timer(times):
            started = time.perf_counter()
            build_corpus(options)
            wall = time.perf_counter() - started
    finally:
        sampler.stop()
    cpu = psutil.Process().cpu_times()
    return BuildRun(
        wall_s=wall,
        stages_s=times,
        main_cpu_s=(cpu.user + cpu.system) - (main_cpu.user + main_cpu.system),
        worker_cpu_s=sum(sampler.cpu_seconds.values()),
        worker_peak_rss_mb=max(sampler.peak_rss.values(), default=0) / 2**20,
        worker_processes=len(sampler.peak_rss),
    )


# --- what the corpus holds ---------------------------------------------------------------------


def used_images(reader: CorpusReader) -> list[str]:
    """Spectral image hrefs of the corpus's status-ok scenes, in product order."""
    scenes = reader.table("scenes").sort_values("product")
    ok = scenes[scenes["status"] == OK]
    return [json.loads(assets)["image"] for assets in ok["assets"]]


def window_bytes(observations: pd.DataFrame, n_bands: int) -> int:
    """Raw bytes the materialize tasks decode: one bounding window per (shard, scene), ``n_bands`` int16."""
    spans = observations.groupby(["shard", "product"]).agg(
        r0=("row", "min"), r1=("row", "max"), c0=("col", "min"), c1=("col", "max")
    )
    pixels = (spans["r1"] - spans["r0"] + PATCH_PX) * (spans["c1"] - spans["c0"] + PATCH_PX)
    return int(pixels.sum()) * n_bands * 2


# --- one benchmark run -------------------------------------------------------------------------


def environment(workers: int, shard_size: int) -> dict[str, Any]:
    """The context recorded with every result."""
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


def bench_replicas(replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the products, build them, measure the limit on the used images; one result row."""
    archive, generated_s = cached_products(args.cache, replicas, args.seed)
    rules = Rules(shard_size=args.shard_size)
    out = Path(tempfile.mkdtemp(prefix=f"corpus-r{replicas}-", dir=args.cache)) / "corpus"
    try:
        warm_page_cache(archive)
        build = run_build(archive, out, args.workers, rules)
        os.sync()  # the shards' write-back must not overlap the limit's timing
        reader = CorpusReader(out)
        summary, shards = corpus_summary(reader), reader.table("shards")
        observations, hrefs = reader.table("observations"), used_images(reader)
        bands = [int(b) for b in selected_bands(rules.bands)]
        warm_page_cache(archive)
        limit = measure_limit(hrefs, bands, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(out.parent, ignore_errors=True)
    return result_row(replicas, generated_s, limit, build, summary, shards, window_bytes(observations, len(bands)), args)


def result_row(
    replicas: int,
    generated_s: float,
    limit: Limit,
    build: BuildRun,
    summary: dict[str, Any],
    shards: pd.DataFrame,
    window: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """All figures of one run as a JSON-ready dict."""
    read_s, write_s = float(shards["read_seconds"].sum()), float(shards["write_seconds"].sum())
    written_mb = float(shards["raw_bytes"].sum()) / MB
    build_mb_s = limit.raw_mb / (build.wall_s * args.workers)
    task_mb_s = limit.raw_mb / (read_s + write_s)
    return {
        **environment(args.workers, args.shard_size),
        "replicas": replicas,
        "products_generated_s": round(generated_s, 2),
        "scenes": summary["scenes"],
        "observations": summary["observations"],
        "shards": summary["shards"],
        "scene_raw_mb": round(limit.raw_mb, 2),
        "window_raw_mb": round(window / MB, 2),
        "written_raw_mb": round(written_mb, 2),
        "limit": _rounded(asdict(limit)),
        "build": {
            **_rounded(asdict(build)),
            "materialize_read_s": round(read_s, 3),
            "materialize_write_s": round(write_s, 3),
            "per_core_mb_s": round(build_mb_s, 2),
            "materialize_per_core_mb_s": round(task_mb_s, 2),
            "written_per_core_mb_s": round(written_mb / (build.wall_s * args.workers), 2),
            "ratio_to_limit": round(build_mb_s / limit.limit_mb_s, 3),
            "materialize_ratio_to_limit": round(task_mb_s / limit.limit_mb_s, 3),
            "materialize_read_mb_s": round(window / MB / read_s, 2),
            "materialize_write_mb_s": round(written_mb / write_s, 2),
        },
        "compression": {"bytes_on_disk": summary["bytes_on_disk"], "ratio": summary["compression_ratio"]},
        "memory": {
            "task_peak_rss_mb": round(float(shards["peak_rss_mb"].max()), 1),
            "sampled_worker_peak_rss_mb": round(build.worker_peak_rss_mb, 1),
        },
    }


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 3) if isinstance(v, float) else v for k, v in values.items()}


# --- report ------------------------------------------------------------------------------------

TABLE = (
    ("replicas", lambda r: r["replicas"]),
    ("used scenes", lambda r: r["scenes"]["used"]),
    ("observations / shards", lambda r: f"{r['observations']} / {r['shards']}"),
    ("raw MB: scene area / windows read / written", lambda r: f"{r['scene_raw_mb']} / {r['window_raw_mb']} / "
     f"{r['written_raw_mb']}"),
    ("limit MB/s/core (decode + encode)", lambda r: r["limit"]["limit_mb_s"]),
    ("  GeoTIFF decode MB/s", lambda r: r["limit"]["decode_tiff_mb_s"]),
    ("  codec encode MB/s", lambda r: r["limit"]["encode_mb_s"]),
    ("  codec decode MB/s", lambda r: r["limit"]["decode_codec_mb_s"]),
    ("  memcpy MB/s", lambda r: r["limit"]["memcpy_mb_s"]),
    ("build wall s", lambda r: r["build"]["wall_s"]),
    ("  stages s", lambda r: ", ".join(f"{k} {v:.2f}" for k, v in r["build"]["stages_s"].items())),
    ("build MB/s/core (scene area)", lambda r: r["build"]["per_core_mb_s"]),
    ("  build / limit (target >= 0.5)", lambda r: r["build"]["ratio_to_limit"]),
    ("materialize task s (read + write)", lambda r: f"{r['build']['materialize_read_s']} + "
     f"{r['build']['materialize_write_s']}"),
    ("materialize MB/s/core (scene area)", lambda r: r["build"]["materialize_per_core_mb_s"]),
    ("  materialize / limit", lambda r: r["build"]["materialize_ratio_to_limit"]),
    ("  task read MB/s (windows) / write MB/s (written)", lambda r: f"{r['build']['materialize_read_mb_s']} / "
     f"{r['build']['materialize_write_mb_s']}"),
    ("worker CPU s / client+scheduler CPU s", lambda r: f"{r['build']['worker_cpu_s']} / {r['build']['main_cpu_s']}"),
    ("compression ratio (target <= 0.6)", lambda r: r["compression"]["ratio"]),
    ("  codec ratio on whole images", lambda r: r["limit"]["codec_ratio"]),
    ("peak RSS MB: task / sampled worker", lambda r: f"{r['memory']['task_peak_rss_mb']} / "
     f"{r['memory']['sampled_worker_peak_rss_mb']}"),
)  # fmt: skip


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as an aligned text table, one column per run."""
    width = max(len(label) for label, _ in TABLE)
    lines = [f"{label:<{width}}  " + "  ".join(f"{cell(row)!s:>14}" for row in rows) for label, cell in TABLE]
    head = rows[0]
    lines.insert(0, f"{head['date']}  {head['cpu']} x{head['cpu_count']}  workers {head['workers']}  shard size "
                 f"{head['shard_size']}  zarr {head['versions']['zarr']}  numcodecs {head['versions']['numcodecs']}")  # fmt: skip
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4], help="input sizes (default: 1 4)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers, one thread each (default: 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/build.jsonl"), help="JSON lines appended here")
    parser.add_argument("--shard-size", type=int, default=Rules().shard_size)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the limit measurement (median kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where products and corpora go")
    parser.add_argument("--keep", action="store_true", help="keep the built corpora (under --cache)")
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
