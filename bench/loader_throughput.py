"""Loader throughput: ``CorpusDataset`` against the published SpectralEarth layout and the decode limit.

Run from the repository root::

    python bench/loader_throughput.py [--replicas 8] [--workers 1 2] [--out bench/results/loader.jsonl]

On one corpus built from ``catalog.synth.write_example(seed, replicas)`` (default rules; 12 patches
per replica) and the same patches exported with ``pipeline.export.export_spectralearth`` (both cached
under ``--cache``, keyed by the sources that shape them; the first run builds them, about a minute),
one run measures:

1. *our loader*: ``PatchLoader(CorpusDataset(corpus, split=None, unit="observation", normalize=False),
   batch_size, ShardAwareSampler(...), num_workers=W, persistent_workers=W > 0)`` exactly as shipped:
   workers decode whole batches of int16 counts into the shared ring; normalisation belongs to the
   accelerator (the trainer passes ``device``), so it is not timed here. W = 0 (reference) and each
   ``--workers`` value; and, at the same W in the same run, *ours normalised*: the same loader over a
   dataset with ``normalize=True`` and no ``device`` (float32 batches on the CPU; where the loader
   normalises them, in its workers or in the main process, is recorded as ``normalised_in``);
2. *the SpectralEarth layout*: a torch dataset over ``DEST/enmap/<location>/<scene>.tif`` that reads
   each item the way the published dataset classes do (torchgeo's ``HySpecNet11k``, the SpectralEarth
   authors' ``SpectralEarthDataset``): ``rasterio.open`` the file, ``read()`` every band, cast to
   float32, then normalise with the corpus mean/std (the same in-place numpy arithmetic as
   ``CorpusDataset``, so only the storage layer differs); same DataLoader settings, a seeded
   ``RandomSampler``. The export is uncompressed int16, pixel-interleaved, one row per strip; as a
   sensitivity check the same reader also runs on a band-interleaved copy with GDAL's default strips;
3. *WebDataset* (when installed: ``pip install -e ".[bench]"``), a streaming format ML users pick
   instead: the same patches as ``<obs>.npy`` int16 samples in tar shards of 16, read by the usual
   pipeline (``WebDataset(shards).decode().to_tuple("npy").batched(16)`` in a ``DataLoader`` with
   ``batch_size=None``), shards split over the workers, in order (its best case: sequential reads);
4. *the decode limit*: numcodecs Blosc decode of the same compressed inner-chunk bytes (all read into
   memory first) into a reused buffer, one thread (``numcodecs.blosc.set_nthreads(1)``), as patches
   per second per core. The limit for W workers is assumed to be W x the one-core figure (perfect
   scaling, nothing left for the main process; W = 0 is compared with one core). Decode into a fresh
   array, memcpy of a decoded patch and the raw GeoTIFF read (int16 into a reused buffer, no float
   conversion; export and band-interleaved copy) are reported as context;
5. a per-stage profile of a worker's batch in one process (pread, decode, float32 cast,
   normalisation, ``default_collate``'s stack into fresh shared memory) to show where the time goes;
6. unless ``--no-variants``, for W > 0: our loader with a consumer that copies every batch once into
   a reused buffer (what the pin-memory thread does on a GPU machine); and the plain per-item path,
   ``DataLoader(CorpusDataset(..., normalize=True), sampler=...)`` with ``default_collate``.

Every loader is timed after a warm-up epoch (which also starts its persistent workers), over
``--repeats`` blocks of ``--epochs`` epochs; the median block is reported. The page cache is warm
for every method: every corpus and GeoTIFF file is read once before timing. The main process only
counts the samples of each batch (it does not touch the pixels) unless a method says otherwise.
Before each loader the script waits (up to ``--quiet-wait`` seconds) for the CPUs to be nearly idle
and records the load it saw. One JSON line per run is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.blosc
import numpy as np
import psutil
import rasterio
import torch
from machine_load import system_load, wait_for_quiet
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from spectral_corpus import corpus_format
from spectral_corpus.catalog import synth as catalog_synth
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.synth import write_example
from spectral_corpus.pipeline import export as pipeline_export
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.pipeline.export import export_spectralearth
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages import store as stages_store
from spectral_corpus.stages.rules import Rules
from spectral_corpus.training import CorpusDataset, ShardAwareSampler
from spectral_corpus.training.loader import PatchLoader
from spectral_corpus.training.shards import PatchReader

try:
    import webdataset as wds  # optional: pip install -e ".[bench]"
except ImportError:  # pragma: no cover
    wds = None

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "spectral-corpus-loader-bench"
DEFAULT_OUT = Path("bench/results/loader.jsonl")
TARGET_VS_SPECTRALEARTH = 2.0
TARGET_VS_DECODE_LIMIT = 0.7
#: What "ours" measures; runs recorded before it was the PatchLoader (the per-item DataLoader) lack the key.
OURS = "PatchLoader"
#: Samples per WebDataset tar shard (96 patches: 6 shards, which 1 and 2 workers split evenly).
WDS_SHARD = 16
PAGE_CACHE = "warm for every method: every corpus and GeoTIFF file is read once before timing"


# --- data: example products -> corpus -> SpectralEarth export (cached) -------------------------------


@dataclass(frozen=True)
class BenchData:
    """The corpus, its SpectralEarth export, and a band-interleaved copy of the export."""

    corpus: Path
    export: Path
    export_band: Path
    webdataset: Path
    prepare_seconds: float


def source_key() -> str:
    """A short hash of the sources that shape the cached data (generator, build, codec, export)."""
    digest = hashlib.sha256()
    for module in (catalog_synth, stages_store, pipeline_export, corpus_format):
        digest.update(Path(str(module.__file__)).read_bytes())
    digest.update((Path(str(pipeline_export.__file__)).parent / "build.py").read_bytes())
    return digest.hexdigest()[:12]


def prepare(cache: Path, replicas: int, seed: int, extras: bool = True, scratch: Path | None = None) -> BenchData:
    """Build (once) the corpus of ``write_example(seed, replicas)`` and export it; reuse a complete cache.

    ``extras``: also the band-interleaved copy of the export and (when installed) the WebDataset shards;
    ``python -m bench`` passes False and writes its formats per run (disk space). ``scratch``: where the
    example products go while the corpus is built (removed afterwards; default: inside the cache).
    """
    root = cache / f"r{replicas}-s{seed}-{source_key()}"
    data = BenchData(
        root / "corpus", root / "spectralearth", root / "spectralearth-band-default-strips", root / "webdataset", 0.0
    )
    started = time.perf_counter()
    if not (root / "COMPLETE").exists():
        shutil.rmtree(root, ignore_errors=True)
        products = root / "products" if scratch is None else Path(tempfile.mkdtemp(prefix="products-", dir=scratch))
        try:
            example = write_example(products, seed=seed, replicas=replicas)
            options = BuildOptions(
                source=str(example.archive), out=data.corpus, query=SceneQuery(), rules=Rules(), workers=2
            )
            build_corpus(options)
            export_spectralearth(CorpusReader(data.corpus), data.export)
        finally:
            shutil.rmtree(products, ignore_errors=True)  # the archive is not needed once the corpus exists
        (root / "COMPLETE").write_text(json.dumps({"replicas": replicas, "seed": seed}))
    if extras and not (data.export_band / "COMPLETE").exists():
        shutil.rmtree(data.export_band, ignore_errors=True)
        band_interleaved_copy(data.export, data.export_band)
        (data.export_band / "COMPLETE").write_text("")
    if extras and wds is not None and not (data.webdataset / "COMPLETE").exists():
        write_webdataset(data.corpus, data.webdataset)
    return BenchData(data.corpus, data.export, data.export_band, data.webdataset, time.perf_counter() - started)


def band_interleaved_copy(src_root: Path, dst_root: Path) -> None:
    """Rewrite every exported GeoTIFF band-interleaved with GDAL's default strips (a sensitivity check only).

    ``export_spectralearth`` writes pixel-interleaved files whose strips are one row of all bands
    (rasterio's defaults for 202 int16 bands); the copy holds the same uncompressed int16 values.
    """
    for src_path in sorted(src_root.rglob("*.tif")):
        dst_path = dst_root / src_path.relative_to(src_root)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(src_path) as src:
            drop = ("blockxsize", "blockysize", "tiled", "interleave")
            profile = {key: value for key, value in src.profile.items() if key not in drop}
            data = src.read()
            descriptions = src.descriptions
        with rasterio.open(dst_path, "w", **profile, interleave="band") as dst:
            dst.write(data)
            for index, text in enumerate(descriptions, 1):
                if text:
                    dst.set_band_description(index, text)


def warm_page_cache(*folders: Path) -> int:
    """Read every file under ``folders`` once (8 MiB blocks); return the bytes read."""
    total = 0
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            with path.open("rb") as f:
                while block := f.read(1 << 23):
                    total += len(block)
    return total


def geotiff_layout(path: Path) -> dict[str, Any]:
    """How an exported GeoTIFF is stored (compression, interleave, block shape, bytes)."""
    with rasterio.open(path) as src:
        return {
            "compression": str(src.compression.value) if src.compression else "none",
            "interleave": src.profile.get("interleave"),
            "tiled": bool(src.profile.get("tiled")),
            "block_shape": list(src.block_shapes[0]),
            "dtype": src.dtypes[0],
            "bands": src.count,
            "file_bytes": path.stat().st_size,
        }


# --- the machine --------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions of everything on the measured paths."""
    names = ("torch", "numpy", "numcodecs", "rasterio", "zarr", "pandas")
    found = {name: package_version(name) for name in names}
    found["gdal"] = str(rasterio.__gdal_version__)
    found["blosc"] = str(getattr(numcodecs.blosc, "VERSION_STRING", "?"))
    found["python"] = platform.python_version()
    return found


# --- WebDataset: a streaming format ML users pick instead ------------------------------------------------


def write_webdataset(corpus: Path, root: Path, observations: Iterable[int] | None = None) -> None:
    """The corpus's patches as WebDataset tar shards of ``WDS_SHARD`` samples, ``<obs>.npy`` int16 (uncompressed).

    ``observations``: the obs ids to write, in this order (default: every observation, by obs id).
    """
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    reader = CorpusReader(corpus)
    chosen = range(reader.manifest.n_obs) if observations is None else observations
    with wds.ShardWriter(str(root / "shard-%04d.tar"), maxcount=WDS_SHARD, verbose=0) as sink:
        for obs in chosen:
            sink.write({"__key__": f"{int(obs):08d}", "npy": reader.read_patch(int(obs))})
    (root / "COMPLETE").write_text("")


def stack_images(samples: Sequence[tuple[np.ndarray]]) -> dict[str, torch.Tensor]:
    """WebDataset's batching step: one int16 batch (as our loader delivers), stacked in the worker."""
    return {"image": torch.from_numpy(np.stack([sample[0] for sample in samples]))}


def stack_images_and_obs(samples: Sequence[tuple[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """As :func:`stack_images`, plus each sample's obs id (its ``__key__``) as ``obs``."""
    return {
        "image": torch.from_numpy(np.stack([sample[1] for sample in samples])),
        "obs": torch.tensor([int(sample[0]) for sample in samples], dtype=torch.int64),
    }


def webdataset_loader(root: Path, workers: int, batch_size: int, with_obs: bool = False) -> DataLoader[Any]:
    """The usual WebDataset pipeline: tar shards split over workers, ``.npy`` decoded, batched in the worker.

    ``with_obs``: batches also carry each sample's obs id (``obs``, from the key), as ``python -m bench``
    needs to check the pixels.
    """
    shards = [str(path) for path in sorted(root.glob("shard-*.tar"))]
    dataset = wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode()
    if with_obs:
        batches = dataset.to_tuple("__key__", "npy").batched(batch_size, collation_fn=stack_images_and_obs)
    else:
        batches = dataset.to_tuple("npy").batched(batch_size, collation_fn=stack_images)
    return DataLoader(batches, batch_size=None, num_workers=workers, persistent_workers=workers > 0)


# --- the SpectralEarth layout ---------------------------------------------------------------------------


class SpectralEarthFiles(Dataset[dict[str, torch.Tensor]]):
    """The published layout read as its dataset classes do: one ``rasterio`` open and ``read()`` per item.

    Items are ``{"image": float32 (C, H, W)}``, normalised with the corpus statistics by the same
    in-place numpy arithmetic as ``CorpusDataset`` (so only the storage layer differs).
    """

    def __init__(self, files: Sequence[Path], mean: np.ndarray, inv_std: np.ndarray) -> None:
        self.files = [str(f) for f in files]
        self.mean, self.inv_std = mean, inv_std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with rasterio.open(self.files[index]) as src:
            image = src.read().astype(np.float32)
        image -= self.mean
        image *= self.inv_std
        return {"image": torch.from_numpy(image)}


def export_files(corpus: Path, export: Path) -> list[Path]:
    """The exported GeoTIFF of every observation, in observation order (the patches our loader reads)."""
    observations = CorpusReader(corpus).table("observations").sort_values("obs")
    files = [
        export / "enmap" / f"{int(loc):07d}" / f"{int(scene):05d}.tif"
        for loc, scene in zip(observations["location_id"], observations["scene_id"], strict=True)
    ]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} exported patches are missing, e.g. {missing[0]}")
    return files


def normalisation(dataset: CorpusDataset) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1 / std) per band, shaped (C, 1, 1): the corpus statistics exactly as the dataset applies them."""
    normalize = dataset.normalizer()
    return normalize.mean.numpy(), normalize.inv_std.numpy()


# --- reading chunks as the loader does --------------------------------------------------------------------


class ChunkSource:
    """The compressed bytes of one patch, read as ``PatchReader`` does (cached shard index, one ``os.pread``).

    Uses ``PatchReader``'s shard index and codec (same bytes, same codec as the loader); made per process.
    """

    def __init__(self, corpus: Path) -> None:
        self.reader = PatchReader(corpus / "patches.zarr" / "patches")
        if self.reader._fast is None:
            raise RuntimeError("the corpus does not have the sharded layout PatchReader reads directly")
        self.shard_size, self.codec = self.reader._fast
        self.shape: tuple[int, ...] = tuple(self.reader.patch_shape)

    def read(self, obs: int) -> bytes:
        """The inner chunk of observation ``obs``."""
        shard, slot = divmod(int(obs), self.shard_size)
        offset, nbytes = self.reader._index(shard)[slot]
        return self.reader.files.read_range(corpus_format.shard_key(shard), int(offset), int(nbytes))  # one os.pread

    def decode(self, data: bytes, out: np.ndarray) -> None:
        """Decode one chunk into ``out`` (contiguous int16, the patch shape)."""
        self.codec.decode(data, out=out)


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor allocated directly in shared memory (what ``default_collate`` does in a worker)."""
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).new(storage).resize_(*shape)


class CopyOut:
    """Consumer that copies each batch's images once into a reused buffer, as the pin-memory thread does."""

    def __init__(self) -> None:
        self.buffer: np.ndarray | None = None

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        image = batch["image"].numpy()
        if self.buffer is None or self.buffer.shape[1:] != image.shape[1:] or len(self.buffer) < len(image):
            self.buffer = np.empty_like(image)
        np.copyto(self.buffer[: len(image)], image)


# --- timing loaders ------------------------------------------------------------------------------------------


@dataclass
class LoaderResult:
    """Samples per second of one loader (median of ``blocks``), the load before it ran and beside it.

    ``external_cpu_pct``: per block, the share of all CPUs that processes outside this run used while
    it was timed (system-wide busy time minus this process and its workers); high values mean the
    block was slowed by other jobs.
    """

    method: str
    workers: int
    samples_per_s: float
    blocks: list[float]
    external_cpu_pct: list[float]
    samples_per_block: int
    first_epoch_s: float
    load_before: dict[str, float] = field(default_factory=dict)


Batches = Iterable[dict[str, torch.Tensor]]


class CpuMeter:
    """System-wide busy CPU seconds and those of this process and its children (DataLoader workers)."""

    def __init__(self) -> None:
        self.wall, self.busy, self.own = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        times = psutil.cpu_times()
        busy = sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
        me = psutil.Process()
        own = 0.0
        for process in [me, *me.children(recursive=True)]:
            try:
                cpu = process.cpu_times()
            except psutil.Error:
                continue
            own += cpu.user + cpu.system
        return time.perf_counter(), busy, own

    def external_pct(self) -> float:
        """Percent of all CPUs used by other processes since the meter was made."""
        wall, busy, own = self._sample()
        cpus = psutil.cpu_count() or 1
        return round(max(0.0, (busy - self.busy) - (own - self.own)) / max(wall - self.wall, 1e-9) / cpus * 100, 1)


def time_loader(
    loader: Batches,
    set_epoch: Callable[[int], None],
    epochs: int,
    repeats: int,
    consume: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> tuple[list[float], list[float], int, float]:
    """Warm-up epoch, then ``repeats`` timed blocks of ``epochs`` epochs.

    Returns samples/s per block, other processes' CPU share per block, samples per block, warm-up seconds.
    """
    epoch = 0

    def run_epoch() -> int:
        nonlocal epoch
        set_epoch(epoch)
        epoch += 1
        count = 0
        for batch in loader:
            if consume is not None:
                consume(batch)
            count += len(batch["image"])
        return count

    started = time.perf_counter()
    run_epoch()
    first = time.perf_counter() - started
    rates, external, samples = [], [], 0
    for _ in range(repeats):
        meter = CpuMeter()
        started = time.perf_counter()
        samples = sum(run_epoch() for _ in range(epochs))
        rates.append(samples / (time.perf_counter() - started))
        external.append(meter.external_pct())
    return rates, external, samples, first


def data_loader(
    dataset: Dataset[Any],
    sampler: Sampler[int],
    workers: int,
    batch_size: int,
    collate: Callable[[Any], Any] | None = None,
    worker_init: Callable[[int], None] | None = None,
) -> DataLoader[Any]:
    """The DataLoader every method shares: ``batch_size``, ``sampler``, W workers, persistent when W > 0."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate,
        worker_init_fn=worker_init,
    )


def measure(
    method: str,
    workers: int,
    make: Callable[[], Batches],
    set_epoch: Callable[[int], None],
    args: argparse.Namespace,
    consume: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> LoaderResult:
    """Time one loader (made after waiting for quiet CPUs, its workers or threads stopped afterwards)."""
    load = wait_for_quiet(args.quiet_wait, 15.0)
    loader = make()
    try:
        rates, external, samples, first = time_loader(loader, set_epoch, args.epochs, args.repeats, consume)
    finally:
        del loader
        gc.collect()
    blocks = [round(r, 2) for r in rates]
    result = LoaderResult(method, workers, statistics.median(rates), blocks, external, samples, first, load)
    print(
        f"  {method:<40} W={workers} {result.samples_per_s:7.1f} samples/s, blocks {blocks}, others' CPU % {external}",
        flush=True,
    )
    return result


def seeded_random_sampler(size: int) -> tuple[RandomSampler, Callable[[int], None]]:
    """A ``RandomSampler`` (what ``shuffle=True`` gives the published classes) reseeded every epoch."""
    generator = torch.Generator()
    sampler = RandomSampler(range(size), generator=generator)

    def set_epoch(epoch: int) -> None:
        generator.manual_seed(epoch)

    return sampler, set_epoch


# --- limits and the per-stage profile ------------------------------------------------------------------------


def chunk_bytes(dataset: CorpusDataset) -> tuple[list[bytes], ChunkSource]:
    """The compressed inner-chunk bytes of every item (the exact bytes the loader reads), and their source."""
    source = ChunkSource(dataset.root)
    return [source.read(int(o)) for o in np.asarray(dataset._obs).tolist()], source


def rate(items: int, fn: Callable[[], None], repeats: int) -> tuple[float, list[float]]:
    """Median items/s of ``repeats`` calls of ``fn`` (each processes ``items`` items), after one warm-up call."""
    fn()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates), [round(r, 2) for r in rates]


def read_tifs(files: Sequence[Path], shape: tuple[int, ...]) -> Callable[[], None]:
    """Raw GeoTIFF read of every file (int16 into a reused buffer: no float conversion)."""
    out = np.empty(shape, dtype=np.int16)

    def run() -> None:
        for path in files:
            with rasterio.open(path) as src:
                src.read(out=out)

    return run


def limits(dataset: CorpusDataset, files: Sequence[Path], band_files: Sequence[Path], repeats: int) -> dict[str, Any]:
    """One-thread patches/s: blosc decode (reused and fresh buffers), memcpy, raw GeoTIFF reads.

    Also, for context, decode with blosc's default thread count (what the loader's processes use).
    """
    chunks, source = chunk_bytes(dataset)
    codec, shape, n = source.codec, source.shape, len(chunks)
    threads = numcodecs.blosc.get_nthreads()
    numcodecs.blosc.set_nthreads(1)
    try:
        out = np.empty(shape, dtype=np.int16)
        sources = [codec.decode(c, out=np.empty(shape, np.int16)) for c in chunks[:16]]

        def decode_reused() -> None:
            for c in chunks:
                codec.decode(c, out=out)

        def decode_fresh() -> None:
            for c in chunks:
                codec.decode(c, out=np.empty(shape, np.int16))

        def memcpy() -> None:
            for i in range(n):
                np.copyto(out, sources[i % len(sources)])

        numcodecs.blosc.set_nthreads(threads)
        threaded, threaded_runs = rate(n, decode_reused, repeats)  # blosc's default thread count, for context
        numcodecs.blosc.set_nthreads(1)
        decode, decode_runs = rate(n, decode_reused, repeats)
        fresh, fresh_runs = rate(n, decode_fresh, repeats)
        copy, copy_runs = rate(n, memcpy, repeats)
        tif, tif_runs = rate(n, read_tifs(files, shape), repeats)
        tif_band, tif_band_runs = rate(n, read_tifs(band_files, shape), repeats)
    finally:
        numcodecs.blosc.set_nthreads(threads)
    raw = int(np.prod(shape)) * 2
    return {
        "decode_per_core": decode,
        "decode_runs": decode_runs,
        "decode_blosc_default_threads": threaded,
        "decode_blosc_default_threads_runs": threaded_runs,
        "blosc_default_threads": threads,
        "decode_fresh_array_per_core": fresh,
        "decode_fresh_runs": fresh_runs,
        "memcpy_int16_patch": copy,
        "memcpy_runs": copy_runs,
        "geotiff_read_int16": tif,
        "geotiff_read_runs": tif_runs,
        "geotiff_read_int16_band_interleaved": tif_band,
        "geotiff_read_band_runs": tif_band_runs,
        "compressed_bytes_per_patch": round(statistics.mean(len(c) for c in chunks)),
        "raw_bytes_per_patch": raw,
        "decode_mb_per_s": round(decode * raw / 1e6, 1),
    }


def profile_item(dataset: CorpusDataset, batch_size: int, repeats: int) -> dict[str, float]:
    """Milliseconds per patch of each step of a worker's batch, in this process, blosc on one thread.

    Items are kept alive until their batch is collated, as in a worker. ``collate_shm``: ``torch.stack``
    of ``batch_size`` float32 patches into a fresh shared-memory tensor (what ``default_collate`` does
    in a worker), per patch; ``collate_shm_int16``: the same for int16 patches; ``getitem_total``:
    ``CorpusDataset.__getitem__`` (metadata included); ``shm_write_float32``: filling a fresh
    shared-memory float32 batch (page faults alone, no source to copy); ``shm_write_float32_reused``:
    filling one allocated (and faulted) once; ``anon_write_float32``: filling a fresh ordinary tensor;
    ``read_batch_into_ring``: what a :class:`PatchLoader` worker does, ``CorpusDataset.read_batch`` of
    raw counts into a reused int16 batch buffer (metadata included); ``read_batch_normalised_into_ring``
    (when the loader normalises in its workers): the same into a reused float32 buffer, normalised.
    """
    _, source = chunk_bytes(dataset)
    obs = np.asarray(dataset._obs).tolist()
    mean, inv_std = normalisation(dataset)
    threads = numcodecs.blosc.get_nthreads()
    numcodecs.blosc.set_nthreads(1)
    steps: dict[str, list[float]] = {}

    def record(name: str, since: float, items: int = 1) -> float:
        now = time.perf_counter()
        steps.setdefault(name, []).append((now - since) * 1e3 / items)
        return now

    reused = _shared_empty((batch_size, *source.shape), torch.float32)
    reused.fill_(0)
    raw = CorpusDataset(dataset.root, split=None, unit="observation", normalize=False)
    ring = np.zeros((batch_size, *source.shape), dtype=np.int16)
    in_workers = normalised_in(dataset) == "workers"
    ring_float = np.zeros((batch_size, *source.shape), dtype=np.float32) if in_workers else None
    try:
        for _ in range(repeats):
            floats: list[torch.Tensor] = []
            ints: list[torch.Tensor] = []
            for o in obs:
                t = time.perf_counter()
                data = source.read(o)
                t = record("pread", t)
                patch = source.codec.decode(data, out=np.empty(source.shape, np.int16))
                t = record("decode_fresh_array", t)
                image = patch.astype(np.float32)
                t = record("to_float32", t)
                image -= mean
                image *= inv_std
                record("normalise", t)
                floats.append(torch.from_numpy(image))
                ints.append(torch.from_numpy(patch))
                if len(floats) == batch_size:
                    t = time.perf_counter()
                    _stack_shared(floats)
                    t = record("collate_shm", t, batch_size)
                    _stack_shared(ints)
                    t = record("collate_shm_int16", t, batch_size)
                    _shared_empty((batch_size, *source.shape), torch.float32).fill_(0)
                    t = record("shm_write_float32", t, batch_size)
                    reused.fill_(0)
                    t = record("shm_write_float32_reused", t, batch_size)
                    torch.empty((batch_size, *source.shape), dtype=torch.float32).fill_(0)
                    record("anon_write_float32", t, batch_size)
                    floats, ints = [], []
            items: list[dict[str, Any]] = []
            for i in range(len(obs)):
                t = time.perf_counter()
                items.append(dataset[i])
                record("getitem_total", t)
                if len(items) == batch_size:
                    items = []
            for start in range(0, len(obs) - batch_size + 1, batch_size):
                t = time.perf_counter()
                raw.read_batch(range(start, start + batch_size), {"image": ring})
                record("read_batch_into_ring", t, batch_size)
                if ring_float is not None:
                    t = time.perf_counter()
                    raw.read_batch(range(start, start + batch_size), {"image": ring_float})
                    record("read_batch_normalised_into_ring", t, batch_size)
    finally:
        numcodecs.blosc.set_nthreads(threads)
    return {name: round(statistics.median(values), 3) for name, values in steps.items()}


def normalised_in(dataset: CorpusDataset) -> str:
    """Where a ``PatchLoader`` without ``device`` normalises: "workers" (into a float32 ring) or "main"."""
    loader = PatchLoader(dataset, 1)  # a two-slot ring of one patch: cheap
    return "workers" if getattr(loader, "normalises_in_workers", False) else "main"


def _stack_shared(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    out = _shared_empty((len(tensors), *tensors[0].shape), tensors[0].dtype)
    return torch.stack(list(tensors), 0, out=out)


# --- the run ---------------------------------------------------------------------------------------------------


def loaders(args: argparse.Namespace, data: BenchData, files: Sequence[Path]) -> list[LoaderResult]:
    """Every loader measurement of the run."""
    raw = CorpusDataset(data.corpus, split=None, unit="observation", normalize=False)
    normalised = CorpusDataset(data.corpus, split=None, unit="observation", normalize=True)
    mean, inv_std = normalisation(normalised)
    spectralearth = SpectralEarthFiles(files, mean, inv_std)
    band = SpectralEarthFiles([data.export_band / f.relative_to(data.export) for f in files], mean, inv_std)
    worker_counts = sorted({0, *args.workers})
    size = args.batch_size
    results = []
    for w in worker_counts:
        results.append(measure_patch_loader("ours", raw, w, args))
        results.append(measure_patch_loader("ours_normalised", normalised, w, args))
        random_sampler, set_epoch = seeded_random_sampler(len(spectralearth))
        make: Callable[[], Batches] = partial(data_loader, spectralearth, random_sampler, w, size)
        results.append(measure("spectralearth_geotiff", w, make, set_epoch, args))
        if w > 0:
            random_sampler, set_epoch = seeded_random_sampler(len(band))
            make = partial(data_loader, band, random_sampler, w, size)
            results.append(measure("spectralearth_geotiff_band_interleaved", w, make, set_epoch, args))
        if wds is not None:
            make = partial(webdataset_loader, data.webdataset, w, size)
            results.append(measure("webdataset_npy", w, make, lambda _epoch: None, args))
    if not args.variants:
        return results
    for w in [w for w in worker_counts if w > 0]:
        results.append(measure_patch_loader("ours_main_copies_batch", raw, w, args, CopyOut()))
        sampler = ShardAwareSampler(normalised, seed=0)
        make = partial(data_loader, normalised, sampler, w, size)
        results.append(measure("items_default_collate", w, make, sampler.set_epoch, args))
    return results


def measure_patch_loader(
    method: str,
    dataset: CorpusDataset,
    workers: int,
    args: argparse.Namespace,
    consume: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> LoaderResult:
    """Time the shipped :class:`PatchLoader` with a seeded :class:`ShardAwareSampler`, W workers, persistent."""
    sampler = ShardAwareSampler(dataset, seed=0)
    size = args.batch_size
    make = partial(PatchLoader, dataset, size, sampler, num_workers=workers, persistent_workers=workers > 0)
    return measure(method, workers, make, sampler.set_epoch, args, consume)


def ratios(
    results: Iterable[LoaderResult], decode_per_core: float, workers: Iterable[int]
) -> dict[str, dict[str, Any]]:
    """Per worker count: our loader against the SpectralEarth layout and against W x the one-core decode limit.

    Every other method (what-ifs) gets its own ratio to the decode limit and to the SpectralEarth layout.
    """
    by_key = {(r.method, r.workers): r.samples_per_s for r in results}
    table: dict[str, dict[str, Any]] = {}
    for w in workers:
        ours, spectralearth = by_key.get(("ours", w)), by_key.get(("spectralearth_geotiff", w))
        if ours is None or spectralearth is None:
            continue
        limit = decode_per_core * max(w, 1)
        row: dict[str, Any] = {
            "ours": round(ours, 2),
            "spectralearth": round(spectralearth, 2),
            "decode_limit": round(limit, 2),
            "vs_spectralearth": round(ours / spectralearth, 3),
            "vs_decode_limit": round(ours / limit, 3),
        }
        normalised = by_key.get(("ours_normalised", w))
        if normalised is not None:
            row["ours_normalised"] = round(normalised, 2)
            row["normalised_vs_raw"] = round(normalised / ours, 3)
        row["meets_spectralearth_target"] = row["vs_spectralearth"] >= TARGET_VS_SPECTRALEARTH
        row["meets_decode_target"] = row["vs_decode_limit"] >= TARGET_VS_DECODE_LIMIT
        row["others"] = {
            method: {"vs_spectralearth": round(value / spectralearth, 3), "vs_decode_limit": round(value / limit, 3)}
            for (method, workers_), value in by_key.items()
            if workers_ == w and method not in ("ours", "spectralearth_geotiff")
        }
        table[str(w)] = row
    return table


def print_table(results: Sequence[LoaderResult], lim: dict[str, Any], rat: dict[str, dict[str, Any]]) -> None:
    """The run's numbers as a plain-text table: samples/s, and the ratios to the targets."""
    workers = sorted({r.workers for r in results})
    by_key = {(r.method, r.workers): r.samples_per_s for r in results}
    print("\nsamples/s (median block); in brackets: / SpectralEarth layout, / decode limit (W x one core)")
    print(f"{'method':<40}" + "".join(f"{'W=' + str(w):>24}" for w in workers))
    for method in dict.fromkeys(r.method for r in results):
        cells = []
        for w in workers:
            value = by_key.get((method, w))
            row = rat.get(str(w))
            if value is None or row is None:
                cells.append(f"{'-':>24}")
                continue
            cells.append(f"{value:8.1f} ({value / row['spectralearth']:4.2f}, {value / row['decode_limit']:4.2f})")
        print(f"{method:<40}" + "".join(cells))
    print(f"{'decode limit':<40}" + "".join(f"{lim['decode_per_core'] * max(w, 1):8.1f}{'':16}" for w in workers))
    print("\none process, patches/s: " + ", ".join(
        f"{k} {lim[k]:.1f}" for k in (
            "decode_per_core", "decode_blosc_default_threads", "decode_fresh_array_per_core", "memcpy_int16_patch",
            "geotiff_read_int16", "geotiff_read_int16_band_interleaved",
        )
    ))  # fmt: skip
    print("\nW  ours / SpectralEarth (target >= 2)   ours / decode limit (target >= 0.7)")
    for count, row in rat.items():
        ok_se = "ok" if row["meets_spectralearth_target"] else "MISSED"
        ok_dec = "ok" if row["meets_decode_target"] else "MISSED"
        print(f"{count}  {row['vs_spectralearth']:6.2f} {ok_se:<30}{row['vs_decode_limit']:6.2f} {ok_dec}")
    print("\nW  ours normalised (float32, no device) / ours raw (int16), samples/s")
    for count, row in rat.items():
        if "normalised_vs_raw" in row:
            print(f"{count}  {row['normalised_vs_raw']:6.2f}  ({row['ours_normalised']:.1f} / {row['ours']:.1f})")


METHOD_ORDER = (
    "ours",
    "ours_normalised",
    "spectralearth_geotiff",
    "spectralearth_geotiff_band_interleaved",
    "webdataset_npy",
    "ours_main_copies_batch",
    "ours_normalised_in_main",
    "items_default_collate",
)


def _method_order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def summarise(path: Path, batch_size: int, max_external: float = 10.0) -> int:
    """Print the median over the runs in ``path`` with ``batch_size`` (and the last such run's patches) as Markdown.

    Per method and W, the median is taken over the timed blocks of every run during which other jobs
    used less than ``max_external`` percent of the CPUs (all blocks when none qualifies).
    """
    lines = path.read_text().splitlines() if path.exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    records = [r for r in records if r["batch_size"] == batch_size and r.get("ours") == OURS]
    if not records:
        print(f"{path}: no runs of the {OURS} with batch size {batch_size}")
        return 1
    last = records[-1]
    runs = [r for r in records if r["patches"] == last["patches"]]
    blocks: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for run in runs:
        for result in run["loaders"]:
            external = result.get("external_cpu_pct") or [0.0] * len(result["blocks"])
            blocks.setdefault((result["method"], result["workers"]), []).extend(
                zip(result["blocks"], external, strict=True)
            )
    median, kept, total = {}, 0, 0
    for key, pairs in blocks.items():
        quiet = [value for value, external in pairs if external < max_external] or [value for value, _ in pairs]
        median[key] = statistics.median(quiet)
        kept, total = kept + len(quiet), total + len(pairs)
    limit = statistics.median(r["limits"]["decode_per_core"] for r in runs)
    workers = sorted({w for _, w in blocks})
    loads = [r["load_start"]["loadavg_1m"] for r in runs]
    print(
        f"{len(runs)} runs, {last['patches']} patches, batch {last['batch_size']}, 1-min load average at start "
        f"{min(loads):.2f}-{max(loads):.2f}; median samples/s over the {kept} of {total} timed blocks during which "
        f"other jobs used < {max_external:g} % of the CPUs (/ SpectralEarth layout at the same W, / decode limit "
        "= W x one-thread decode)\n"
    )
    print("| method | " + " | ".join(f"W={w}" for w in workers) + " |")
    print("|---|" + "---:|" * len(workers))
    for method in sorted(dict.fromkeys(m for m, _ in blocks), key=_method_order):
        cells = []
        for w in workers:
            value, base = median.get((method, w)), median.get(("spectralearth_geotiff", w))
            if value is None or base is None:
                cells.append("-")
                continue
            cells.append(f"{value:.1f} ({value / base:.2f}x, {value / (limit * max(w, 1)):.2f})")
        print(f"| {method} | " + " | ".join(cells) + " |")
    print("| decode limit | " + " | ".join(f"{limit * max(w, 1):.1f}" for w in workers) + " |")
    keys: tuple[str, ...] = ("decode_per_core", "decode_blosc_default_threads", "decode_fresh_array_per_core")
    keys = (*keys, "memcpy_int16_patch", "geotiff_read_int16", "geotiff_read_int16_band_interleaved")
    print("\none process, patches/s (median): " + ", ".join(
        f"{k} {statistics.median(r['limits'][k] for r in runs if k in r['limits']):.1f}" for k in keys
    ))  # fmt: skip
    steps = runs[-1]["profile_ms_per_patch"]
    print("profile, ms per patch (median): " + ", ".join(
        f"{k} {statistics.median(r['profile_ms_per_patch'][k] for r in runs if k in r['profile_ms_per_patch']):.2f}"
        for k in steps
    ))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark once; append one JSON line to ``--out``."""
    args = parse_args(argv)
    if args.summary:
        return summarise(args.out, args.batch_size)
    started = time.perf_counter()
    data = prepare(args.cache, args.replicas, args.seed)
    sections = {"prepare": round(time.perf_counter() - started, 1)}
    warmed = warm_page_cache(data.corpus / "patches.zarr", data.export, data.export_band, data.webdataset)
    ours = CorpusDataset(data.corpus, split=None, unit="observation", normalize=True)
    files = export_files(data.corpus, data.export)
    band_files = [data.export_band / f.relative_to(data.export) for f in files]
    print(f"{len(ours)} patches, batch {args.batch_size}, page cache warmed ({warmed / 1e6:.0f} MB)", flush=True)
    context = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "ours": OURS,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "load_start": wait_for_quiet(args.start_wait, 15.0),
        "versions": versions(),
        "replicas": args.replicas,
        "seed": args.seed,
        "patches": len(ours),
        "batch_size": args.batch_size,
        "epochs_per_block": args.epochs,
        "blocks": args.repeats,
        "blosc_threads_default": numcodecs.blosc.get_nthreads(),
        "torch_threads_main": torch.get_num_threads(),
        "sharing_strategy": torch.multiprocessing.get_sharing_strategy(),
        "worker_start_method": torch.multiprocessing.get_start_method(),
        "page_cache": PAGE_CACHE,
        "normalised_in": normalised_in(ours),
        "main_process_consumer": "counts samples only (pixels untouched) unless the method says otherwise",
        "geotiff_layout": geotiff_layout(files[0]),
        "geotiff_layout_band_copy": geotiff_layout(band_files[0]),
        "prepare_seconds": round(data.prepare_seconds, 1),
        "decode_limit_assumption": "limit for W workers = W x one-thread decode (W=0: 1 x)",
    }
    print("limits (one thread) ...", flush=True)
    mark = time.perf_counter()
    lim = limits(ours, files, band_files, args.repeats)
    sections["limits"] = round(time.perf_counter() - mark, 1)
    print("per-stage profile ...", flush=True)
    mark = time.perf_counter()
    profile = profile_item(ours, args.batch_size, args.repeats)
    sections["profile"] = round(time.perf_counter() - mark, 1)
    print("loaders ...", flush=True)
    mark = time.perf_counter()
    results = loaders(args, data, files)
    sections["loaders"] = round(time.perf_counter() - mark, 1)
    rat = ratios(results, lim["decode_per_core"], sorted({0, *args.workers}))
    context["load_end"] = system_load()
    record = {
        **context,
        "limits": lim,
        "profile_ms_per_patch": profile,
        "loaders": [asdict(r) for r in results],
        "ratios": rat,
        "targets": {"vs_spectralearth": TARGET_VS_SPECTRALEARTH, "vs_decode_limit": TARGET_VS_DECODE_LIMIT},
        "seconds": round(time.perf_counter() - started, 1),
        "section_seconds": sections,
    }
    print_table(results, lim, rat)
    print("\nprofile, ms per patch (one process, blosc 1 thread): " + ", ".join(f"{k} {v}" for k, v in profile.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"\nappended to {args.out} ({record['seconds']} s)")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=8, help="write_example replicas (12 patches each)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers (W=0 is always added)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per loader (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quiet-wait", type=float, default=3.0, help="max seconds to wait for idle CPUs before each loader"
    )
    parser.add_argument("--start-wait", type=float, default=60.0, help="max seconds to wait for idle CPUs at the start")
    parser.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True, help="what-if loaders")
    parser.add_argument(
        "--summary", action="store_true", help="only print the median of the runs in --out with --batch-size"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
