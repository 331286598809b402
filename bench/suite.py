"""``python -m bench``: one Markdown table of the corpus against what ML users would pick instead, same run.

Run from the repository root::

    python -m bench [--quick] [--table bench/results/table.md] [--out bench/results/bench.jsonl]

What one run measures (every ratio is taken between figures of this run):

1. **Build** against its read + encode limit: ``bench/build_throughput.py --replicas R`` as a subprocess
   (R = ``--build-replicas``), its JSON row read back: build MB/s per core / limit MB/s per core, the
   compression ratio and the sampled peak RSS of a Dask worker.
2. **Loaders** on one corpus (``loader_throughput.prepare``: ``write_example(replicas)``, built and exported
   to the SpectralEarth layout, cached). N patches, the largest multiple of (largest batch x most workers)
   that the corpus holds (128 of the 132 of 11 replicas; 32 of 36 with ``--quick``), so that every
   loader splits every epoch evenly over its workers. Each format holds exactly those N observations:
   - *ours*: ``PatchLoader(CorpusDataset(..., normalize=False), B, ShardAwareSampler(...))``, int16 batches,
     as ``loader_throughput.py`` times it (the sampler sees only the N items' shards);
   - *SpectralEarth layout*: one uncompressed GeoTIFF per patch read with rasterio, float32 and normalised
     as the published dataset classes do, ``default_collate`` (``loader_throughput.SpectralEarthFiles``);
   - *WebDataset*, *LitData* and *MosaicML Streaming*, the latter two without and with their own zstd
     compression (``bench/formats.py`` says how each is written and read);
   - the *decode limit*: one-thread blosc decode of the same N chunks, W x that for W workers
     (measured before and after the loaders; the mean of the two medians is used).
   For each format and each (workers W, batch size B): one warm-up epoch (which also starts the persistent
   workers), then ``--repeats`` timed blocks of ``--epochs`` epochs; the median block's samples/s counts.
   Every epoch must deliver exactly N samples. A cell during whose median block other processes used more
   than ``--disturbed`` percent of the CPUs is timed once more after waiting for quiet CPUs (within
   ``--retry-budget`` seconds per run) and the quieter try is kept; the table marks cells still disturbed.
   While a loader runs, the RSS (and USS) of its worker processes are sampled every 0.1 s (psutil); the
   peak of any one worker is reported, and the main process's peak RSS (ours keeps its batch ring there).
3. **Bytes on disk** of each format / raw int16 bytes of its patches (for MDS with zstd also its local
   cache of inflated shards).
4. **Same pixels**: before timing, one epoch of every loader (2 workers, batch 16) is hashed per obs id
   (SHA-1 of the int16 image); each must deliver every observation once with the hash that
   ``CorpusReader.read_patch`` (zarr) gives, and so must ours. Any difference stops the run
   (``PixelMismatch``, exit status 1).

Formats are written, measured and deleted one at a time (a run needs about 2 x N x 6.6 MB of free disk
beyond the cached corpus; ``--keep-formats`` keeps them). One JSON line per run is appended to
``--out``; the table is written to ``--table`` and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import formats
import loader_throughput as lt
import numcodecs.blosc
import numpy as np
import psutil
import torch
from machine_load import system_load, wait_for_quiet

from spectral_corpus.training import CorpusDataset, ShardAwareSampler
from spectral_corpus.training.loader import PatchLoader

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
QUICK_DIR = Path(tempfile.gettempdir()) / "spectral-corpus-bench-quick"
#: The loader data's replicas: 11 x 12 = 132 patches, of which 128 are used (2 workers x batch 64).
REPLICAS, QUICK_REPLICAS = 11, 3
BUILD_REPLICAS, QUICK_BUILD_REPLICAS = 4, 1
OURS, SPECTRALEARTH = "ours", "spectralearth_geotiff"


class PixelMismatch(AssertionError):
    """A format delivered other pixels, or other observations, than the corpus holds."""


# --- the subset every format holds ---------------------------------------------------------------------------------


class ObservationSubset:
    """The first ``n`` items of a ``CorpusDataset``, grouped by shard, for ``ShardAwareSampler``.

    ``len`` stays the dataset's: the sampler offsets indices by ``epoch x len``, and the dataset takes
    them modulo its own length, so each index still names the same item.
    """

    def __init__(self, dataset: CorpusDataset, n: int) -> None:
        groups = [group[group < n] for group in dataset.shard_groups()]
        self.groups = [group for group in groups if len(group)]
        self.size = len(dataset)

    def shard_groups(self) -> list[np.ndarray]:
        return self.groups

    def __len__(self) -> int:
        return self.size


class SpectralEarthWithObs(lt.SpectralEarthFiles):
    """``loader_throughput.SpectralEarthFiles`` whose items also carry their obs id (for the pixel check)."""

    def __init__(self, files: Sequence[Path], obs: Sequence[int], mean: np.ndarray, inv_std: np.ndarray) -> None:
        super().__init__(files, mean, inv_std)
        self.obs = [int(o) for o in obs]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item: dict[str, Any] = super().__getitem__(index)
        item["obs"] = self.obs[index]
        return item


def usable_patches(available: int, batch_sizes: Sequence[int], workers: Sequence[int]) -> int:
    """The largest multiple of max(batch) x max(workers) available, else of min(batch) x max(workers)."""
    for step in (max(batch_sizes) * max(workers), min(batch_sizes) * max(workers)):
        if available >= step:
            return available // step * step
    raise ValueError(f"{available} patches cannot fill one batch of {min(batch_sizes)} per worker")


# --- worker memory -------------------------------------------------------------------------------------------------


class WorkerMemory(threading.Thread):
    """Sample the RSS and USS of this process's loader workers (forked children: same command line)."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.halt = threading.Event()
        self.rss: dict[int, int] = {}
        self.uss: dict[int, int] = {}
        self.main_rss = 0
        self._is_worker: dict[int, bool] = {}

    def run(self) -> None:
        me = psutil.Process()
        command = me.cmdline()
        while not self.halt.wait(self.interval):
            self.main_rss = max(self.main_rss, me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    if child.pid not in self._is_worker:
                        self._is_worker[child.pid] = child.cmdline() == command
                    if not self._is_worker[child.pid]:
                        continue  # multiprocessing's resource tracker, say
                    info = child.memory_full_info()
                except psutil.Error:
                    continue
                self.rss[child.pid] = max(self.rss.get(child.pid, 0), info.rss)
                self.uss[child.pid] = max(self.uss.get(child.pid, 0), info.uss)

    def stop(self) -> dict[str, float | int]:
        """Stop sampling; the peak of any one worker, in MB."""
        self.halt.set()
        self.join()
        return {
            "workers_seen": len(self.rss),
            "peak_rss_mb": round(max(self.rss.values(), default=0) / 1e6, 1),
            "peak_uss_mb": round(max(self.uss.values(), default=0) / 1e6, 1),
            "main_peak_rss_mb": round(self.main_rss / 1e6, 1),
        }


# --- timing --------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One format at one (workers, batch size): samples/s of the median block, and its workers' memory."""

    method: str
    workers: int
    batch_size: int
    samples_per_s: float
    blocks: list[float]
    external_cpu_pct: list[float]
    samples_per_block: int
    first_epoch_s: float
    memory: dict[str, float | int]
    #: The share of all CPUs that other processes used during the median block.
    others_pct: float
    load_before: dict[str, float] = field(default_factory=dict)
    #: An earlier or later attempt at the same cell that other jobs disturbed more (see ``measure``).
    attempts: list[dict[str, Any]] = field(default_factory=list)


def measure(
    method: str,
    workers: int,
    batch_size: int,
    make: Callable[[], Any],
    set_epoch: Callable[[int], None],
    args: argparse.Namespace,
    n: int,
) -> Cell:
    """Time one loader; once more, after waiting for quiet CPUs, when other jobs disturbed it; keep the quieter.

    A run is *disturbed* when other processes used more than ``--disturbed`` percent of the CPUs in its
    median block. Both attempts are kept in the record (``attempts``). Second tries stop once they have
    taken ``--retry-budget`` seconds in all (they bound the run's length on a busy machine).
    """
    cell = measure_once(method, workers, batch_size, make, set_epoch, args, n, args.quiet_wait)
    if cell.others_pct > args.disturbed and args.retry_wait > 0 and args.retry_budget > 0:
        started = time.perf_counter()
        again = measure_once(method, workers, batch_size, make, set_epoch, args, n, args.retry_wait)
        args.retry_budget -= time.perf_counter() - started
        kept, other = (again, cell) if again.others_pct < cell.others_pct else (cell, again)
        kept.attempts = [asdict(other)]
        return kept
    return cell


def measure_once(
    method: str,
    workers: int,
    batch_size: int,
    make: Callable[[], Any],
    set_epoch: Callable[[int], None],
    args: argparse.Namespace,
    n: int,
    quiet_wait: float,
) -> Cell:
    """Time one loader (``loader_throughput.time_loader``) while sampling its workers' memory; stop its workers."""
    load = wait_for_quiet(quiet_wait, 15.0)
    loader = make()
    memory = WorkerMemory()
    memory.start()
    try:
        rates, external, samples, first = lt.time_loader(loader, set_epoch, args.epochs, args.repeats)
    finally:
        peaks = memory.stop()
        formats.close_loader(loader)
        del loader
    if samples != args.epochs * n:
        raise PixelMismatch(
            f"{method} W={workers} B={batch_size}: {samples} samples per block, not {args.epochs} x {n}"
        )
    median = statistics.median(rates)
    others = external[rates.index(median)] if median in rates else statistics.median(external)
    cell = Cell(
        method, workers, batch_size, median, [round(r, 2) for r in rates], external, samples, round(first, 3),
        peaks, others, load,
    )  # fmt: skip
    print(
        f"  {method:<22} W={workers} B={batch_size:<3} {cell.samples_per_s:7.1f} samples/s, blocks {cell.blocks}, "
        f"others' CPU % {external}, worker peak RSS {peaks['peak_rss_mb']} MB",
        flush=True,
    )
    return cell


def no_epochs(_epoch: int) -> None:
    """For loaders that count their epochs themselves (or have none)."""


def decode_limit(dataset: CorpusDataset, n: int, repeats: int) -> dict[str, Any]:
    """One-thread blosc decode of the first ``n`` items' chunks into a reused buffer, patches/s (one core)."""
    chunks, source = lt.chunk_bytes(dataset)
    chunks = chunks[:n]
    out = np.empty(source.shape, dtype=np.int16)
    threads = numcodecs.blosc.get_nthreads()
    numcodecs.blosc.set_nthreads(1)
    try:

        def run() -> None:
            for chunk in chunks:
                source.codec.decode(chunk, out=out)

        per_core, runs = lt.rate(len(chunks), run, repeats)
    finally:
        numcodecs.blosc.set_nthreads(threads)
    return {"per_core": round(per_core, 2), "runs": runs, "compressed_bytes": sum(len(c) for c in chunks)}


# --- the pixel check -----------------------------------------------------------------------------------------------


def one_epoch(loader: Any, set_epoch: Callable[[int], None]) -> Any:
    """The batches of one epoch (epoch 0)."""
    set_epoch(0)
    yield from loader


def check_pixels(
    method: str, make: Callable[[], Any], set_epoch: Callable[[int], None], reference: dict[int, str]
) -> tuple[int, float]:
    """One epoch of a loader must give every reference observation exactly once, with the reference hash.

    Returns the observations checked and the seconds the pass took (workers' start and hashing included).
    """
    started = time.perf_counter()
    loader = make()
    try:
        sums = formats.image_checksums(one_epoch(loader, set_epoch))
    finally:
        formats.close_loader(loader)
        del loader
    missing = sorted(set(reference) - set(sums))
    extra = sorted(set(sums) - set(reference))
    repeated = sorted(o for o, found in sums.items() if len(found) > 1)
    wrong = sorted(o for o, found in sums.items() if o in reference and any(s != reference[o] for s in found))
    if missing or extra or repeated or wrong:
        raise PixelMismatch(
            f"{method}: {len(wrong)} observations with other pixels (e.g. {wrong[:5]}), {len(missing)} missing "
            f"(e.g. {missing[:5]}), {len(extra)} not in the corpus subset (e.g. {extra[:5]}), {len(repeated)} "
            f"delivered more than once (e.g. {repeated[:5]})"
        )
    seconds = time.perf_counter() - started
    print(
        f"  {method:<22} same pixels as the corpus for all {len(reference)} observations ({seconds:.1f} s)", flush=True
    )
    return len(reference), round(seconds, 2)


def reference_checksums(corpus: Path, observations: Sequence[int]) -> dict[int, str]:
    """SHA-1 of each observation's int16 patch as ``CorpusReader.read_patch`` (zarr-python) reads it."""
    samples = (formats.read_sample(str(corpus), int(o)) for o in observations)
    batches = ({"image": s["image"][None], "obs": np.asarray([s["obs"]])} for s in samples)
    return {obs: found[0] for obs, found in formats.image_checksums(batches).items()}


# --- the build -----------------------------------------------------------------------------------------------------


def run_build_benchmark(replicas: int, wait_quiet: float) -> dict[str, Any]:
    """``bench/build_throughput.py --replicas R`` in a subprocess; its JSON row."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "build.jsonl"
        command = [
            sys.executable, str(BENCH / "build_throughput.py"), "--replicas", str(replicas), "--out", str(out),
            "--wait-quiet", str(wait_quiet), "--repeats", "3",
        ]  # fmt: skip
        print("build: " + " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=REPO)
        row: dict[str, Any] = json.loads(out.read_text().splitlines()[-1])
    return row


def build_figures(row: dict[str, Any]) -> dict[str, Any]:
    """The build row's headline figures."""
    return {
        "replicas": row["replicas"],
        "workers": row["workers"],
        "observations": row["observations"],
        "scene_raw_mb": row["scene_raw_mb"],
        "wall_s": row["build"]["wall_s"],
        "per_core_mb_s": row["build"]["per_core_mb_s"],
        "limit_mb_s": row["limit"]["limit_mb_s"],
        "ratio_to_limit": row["build"]["ratio_to_limit"],
        "compression_ratio": row["compression"]["ratio"],
        "worker_peak_rss_mb": row["memory"]["sampled_worker_peak_rss_mb"],
    }


# --- the machine ---------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine() -> dict[str, Any]:
    """Where and with what software the run happened."""
    names = ("torch", "numpy", "numcodecs", "zarr", "rasterio", "psutil", "webdataset", "litdata",
             "mosaicml-streaming", "zstd")  # fmt: skip
    found = {}
    for name in names:
        try:
            found[name] = package_version(name)
        except Exception:
            found[name] = "missing"
    found["blosc"] = str(getattr(numcodecs.blosc, "VERSION_STRING", "?"))
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": found,
        "worker_start_method": torch.multiprocessing.get_start_method(),
    }


# --- the run -------------------------------------------------------------------------------------------------------


Factory = Callable[[int, int, bool], tuple[Callable[[], Any], Callable[[int], None]]]


def loaders_of(patches: Patches) -> dict[str, Factory]:
    """For ours and the SpectralEarth layout: (workers, batch, for the check) -> (make the loader, set its epoch).

    For the pixel check the SpectralEarth reader normalises with mean 0 and std 1: float32 counts.
    """
    raw, files, observations = patches.raw, patches.files, patches.observations
    normalised = CorpusDataset(patches.data.corpus, split=None, unit="observation", normalize=True)
    mean, inv_std = lt.normalisation(normalised)
    spectralearth = SpectralEarthWithObs(files, observations, mean, inv_std)
    counts = SpectralEarthWithObs(files, observations, np.zeros_like(mean), np.ones_like(inv_std))

    def ours(workers: int, batch: int, check: bool = False) -> tuple[Callable[[], Any], Callable[[int], None]]:
        sampler = ShardAwareSampler(ObservationSubset(raw, patches.n), seed=0)
        make = partial(PatchLoader, raw, batch, sampler, num_workers=workers, persistent_workers=workers > 0)
        return make, sampler.set_epoch

    def geotiff(workers: int, batch: int, check: bool = False) -> tuple[Callable[[], Any], Callable[[int], None]]:
        dataset = counts if check else spectralearth
        sampler, set_epoch = lt.seeded_random_sampler(len(dataset))
        return partial(lt.data_loader, dataset, sampler, workers, batch), set_epoch

    return {OURS: ours, SPECTRALEARTH: geotiff}


def ensure_free(folder: Path, needed: int, what: str) -> None:
    """Stop before writing ``what`` when the disk under ``folder`` has less than ``needed`` bytes (+ 0.5 GB) free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + 500e6:
        raise OSError(f"{folder}: {free / 1e9:.1f} GB free, {what} needs about {needed / 1e9:.1f} GB (+ 0.5 GB)")


def prune_stale(root: Path) -> None:
    """Remove this cache's entries for the same replicas and seed built from older sources (1.4 GB each at r11)."""
    prefix = root.name.rsplit("-", 1)[0] + "-"
    for stale in root.parent.glob(prefix + "*"):
        if stale != root and stale.is_dir():
            print(f"removing the stale loader data {stale}", flush=True)
            shutil.rmtree(stale, ignore_errors=True)


def grid(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The (workers, batch size) pairs, in the table's column order."""
    return [(w, b) for b in args.batch_sizes for w in args.workers]


@dataclass
class Patches:
    """The loader data: the corpus, the N observations every format holds, their GeoTIFFs and reference hashes."""

    data: Any  # loader_throughput.BenchData
    raw: CorpusDataset
    observations: list[int]
    files: list[Path]
    reference: dict[int, str]
    raw_patch_bytes: int

    @property
    def n(self) -> int:
        return len(self.observations)


def loader_data(args: argparse.Namespace) -> Patches:
    """Build (once) and read the loader data; hash the N observations as zarr-python reads them."""
    data = lt.prepare(args.cache, args.replicas, args.seed, extras=False, scratch=args.scratch)
    prune_stale(data.corpus.parent)
    raw = CorpusDataset(data.corpus, split=None, unit="observation", normalize=False)
    n = usable_patches(len(raw), args.batch_sizes, args.workers)
    observations = [int(o) for o in np.asarray(raw._obs)[:n]]
    in_obs_order = lt.export_files(data.corpus, data.export)
    by_obs = dict(zip(sorted(int(o) for o in np.asarray(raw._obs)), in_obs_order, strict=True))
    lt.warm_page_cache(data.corpus / "patches.zarr", data.export)
    raw_patch_bytes = math.prod(raw.image_shape()) * 2
    reference = reference_checksums(data.corpus, observations)
    return Patches(data, raw, observations, [by_obs[o] for o in observations], reference, raw_patch_bytes)


def measure_baselines(patches: Patches, args: argparse.Namespace) -> tuple[list[Cell], dict[str, tuple[int, float]]]:
    """Ours and the SpectralEarth layout: the pixel check, then every (workers, batch)."""
    cells: list[Cell] = []
    checked: dict[str, tuple[int, float]] = {}
    check_at = (max(args.workers), min(args.batch_sizes))
    for method, factory in loaders_of(patches).items():
        checked[method] = check_pixels(method, *factory(*check_at, True), patches.reference)
        cells.extend(measure(method, w, b, *factory(w, b, False), args, patches.n) for w, b in grid(args))
    return cells, checked


def measure_format(fmt: formats.Format, patches: Patches, args: argparse.Namespace) -> dict[str, Any]:
    """Write one format, record its bytes, check its pixels, time it; then delete it (unless ``--keep-formats``)."""
    work = args.cache / "formats"
    root = work / fmt.name
    ensure_free(work, 2 * patches.n * patches.raw_patch_bytes, f"{fmt.name} (with MDS's inflated cache)")
    print(f"{fmt.name}: writing {patches.n} patches ...", flush=True)
    written = formats.write_timed(fmt, root, patches.data.corpus, patches.observations)
    os.sync()  # write-back must not overlap the timing
    disk: dict[str, Any] = {"bytes": formats.folder_bytes(root), "patches": patches.n}
    check_at = (max(args.workers), min(args.batch_sizes))
    try:
        checked = check_pixels(fmt.name, partial(fmt.loader, root, *check_at), no_epochs, patches.reference)
        if fmt.cache_dir is not None:
            disk["local_cache_bytes"] = formats.folder_bytes(fmt.cache_dir(root))
        cells = [
            measure(fmt.name, w, b, partial(fmt.loader, root, w, b), no_epochs, args, patches.n) for w, b in grid(args)
        ]
    finally:
        if not args.keep_formats:
            shutil.rmtree(root, ignore_errors=True)
            if fmt.cache_dir is not None:
                shutil.rmtree(fmt.cache_dir(root), ignore_errors=True)
    return {"cells": cells, "checked": checked, "disk": disk, "write_s": round(written, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one run, as the JSON record."""
    started = time.perf_counter()
    record: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *args.argv]),
        "quick": args.quick,
        "machine": machine(),
        "load_start": wait_for_quiet(args.start_wait, 15.0),
    }
    if args.build_replicas:
        row = run_build_benchmark(args.build_replicas, args.build_wait)
        record["build"] = build_figures(row)
        record["build_row"] = row
    print("loader data ...", flush=True)
    patches = loader_data(args)
    shape = list(patches.raw.image_shape())
    print(f"{patches.n} of {len(patches.raw)} patches, {shape} int16; decode limit ...", flush=True)
    limits = [decode_limit(patches.raw, patches.n, max(args.repeats, 3))]
    disk: dict[str, dict[str, Any]] = {
        OURS: {"bytes": formats.folder_bytes(patches.data.corpus / "patches.zarr"), "patches": len(patches.raw)},
        SPECTRALEARTH: {"bytes": sum(f.stat().st_size for f in patches.files), "patches": patches.n},
    }
    cells, checked = measure_baselines(patches, args)
    written: dict[str, float] = {}
    for fmt in (f for f in formats.formats() if f.name in args.formats):
        result = measure_format(fmt, patches, args)
        cells += result["cells"]
        checked[fmt.name], disk[fmt.name], written[fmt.name] = result["checked"], result["disk"], result["write_s"]
    pixel_check = {method: {"observations": count, "seconds": seconds} for method, (count, seconds) in checked.items()}
    limits.append(decode_limit(patches.raw, patches.n, max(args.repeats, 3)))
    for entry in disk.values():
        raw_bytes = entry["patches"] * patches.raw_patch_bytes
        entry["ratio_to_raw"] = round(entry["bytes"] / raw_bytes, 4)
        if "local_cache_bytes" in entry:
            entry["local_cache_ratio_to_raw"] = round(entry["local_cache_bytes"] / raw_bytes, 4)
    record.update(
        replicas=args.replicas, patches=patches.n, corpus_patches=len(patches.raw), patch_shape=shape,
        raw_bytes_per_patch=patches.raw_patch_bytes, workers=args.workers, batch_sizes=args.batch_sizes,
        epochs_per_block=args.epochs, blocks=args.repeats, prepare_s=round(patches.data.prepare_seconds, 1),
        decode_limit={"per_core": round(statistics.mean(x["per_core"] for x in limits), 2), "measurements": limits},
        disk=disk, write_s=written, pixel_check=pixel_check,
        pixel_check_at={"workers": max(args.workers), "batch": min(args.batch_sizes)},
        loaders=[asdict(c) for c in cells], disturbed_pct=args.disturbed, retry_budget_left_s=round(args.retry_budget),
        load_end=system_load(),
        seconds=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    return record


# --- the command line ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options; ``--quick`` changes the defaults of the sizes and repeats."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 replicas (32 patches), 1 block, build r1")
    parser.add_argument("--replicas", type=int, help=f"write_example replicas of the loader data (default {REPLICAS})")
    parser.add_argument(
        "--build-replicas", type=int, help=f"build benchmark size, 0 to skip (default {BUILD_REPLICAS})"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader workers (default: 1 2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64], help="batch sizes (default: 16 64)")
    parser.add_argument("--epochs", type=int, help="epochs per timed block (default 2; quick 1)")
    parser.add_argument("--repeats", type=int, help="timed blocks per loader, median reported (default 3; quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--formats", nargs="+", default=[f.name for f in formats.formats()], help="competitor formats (default: all)"
    )
    parser.add_argument("--quiet-wait", type=float, default=3.0, help="max s to wait for idle CPUs before each loader")
    parser.add_argument(
        "--disturbed", type=float, default=10.0, help="others' CPU %% in the median block that calls for a second try"
    )
    parser.add_argument(
        "--retry-wait", type=float, default=30.0, help="max s to wait for idle CPUs before that try (0: no retry)"
    )
    parser.add_argument("--retry-budget", type=float, help="max s for all second tries (default 240; quick 0)")
    parser.add_argument("--start-wait", type=float, default=30.0, help="max s to wait for idle CPUs at the start")
    parser.add_argument("--build-wait", type=float, default=30.0, help="build_throughput.py --wait-quiet")
    parser.add_argument("--keep-formats", action="store_true", help="keep the written formats under --cache/formats")
    parser.add_argument("--cache", type=Path, default=lt.DEFAULT_CACHE, help="loader data cache (loader_throughput's)")
    parser.add_argument(
        "--scratch", type=Path, help="where the example products go while the loader data is built (e.g. /dev/shm)"
    )
    parser.add_argument("--out", type=Path, help="JSON line appended here (default bench/results/bench.jsonl)")
    parser.add_argument("--table", type=Path, help="Markdown table written here (default bench/results/table.md)")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    quick = args.quick
    defaults = {
        "replicas": QUICK_REPLICAS if quick else REPLICAS,
        "build_replicas": QUICK_BUILD_REPLICAS if quick else BUILD_REPLICAS,
        "epochs": 1 if quick else 2,
        "retry_budget": 0.0 if quick else 240.0,
        "repeats": 1 if quick else 3,
        "out": (QUICK_DIR if quick else RESULTS) / "bench.jsonl",
        "table": (QUICK_DIR if quick else RESULTS) / "table.md",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.formats) - {f.name for f in formats.formats()}
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run everything once; append the JSON line, write the table, print it."""
    import report

    args = parse_args(sys.argv[1:] if argv is None else argv)
    libraries = formats.available()
    needed = {f.library for f in formats.formats() if f.name in args.formats}
    if needed - set(libraries):
        print(f"missing {sorted(needed - set(libraries))}: run `bash bench/install.sh` first", file=sys.stderr)
        return 2
    formats.quiet_library_warnings()
    if "mds" in args.formats or "mds_zstd" in args.formats:
        formats.clean_mds_shared_memory()
    try:
        record = run(args)
    except PixelMismatch as error:
        print(f"\nPIXEL CHECK FAILED: {error}", file=sys.stderr)
        return 1
    table = report.markdown(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(table)
    print("\n" + table)
    print(f"appended to {args.out}; table in {args.table} ({record['seconds']} s)")
    return 0
