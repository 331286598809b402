"""Where a materialize task's time goes: one shard, step by step, then the real task under cProfile.

Run from the repository root::

    python bench/profile_materialize.py [--replicas 4] [--out bench/results/materialize_profile.txt]

It takes the fullest shard of a corpus built once from the cached example products (see
``build_throughput.py``) and, in this process and with a warm page cache, times the steps of
``stages.materialize.materialize_shard`` one at a time (median of ``--repeats``), with the CPU seconds
of this process beside the wall seconds (CPU > wall means zarr used more than one thread). Then it runs
the real ``materialize_shard`` into a fresh patch array under cProfile. cProfile sees the calling
thread only: zarr encodes in its own threads, which show up as lock waits.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import zarr
from build_throughput import (
    DEFAULT_CACHE,
    MB,
    cached_corpus,
    decoded_bytes,
    machine,
    patch_codec,
    shard_windows,
    single_threaded_blosc,
    used_images,
    warm_page_cache,
)
from rasterio.windows import Window

from spectral_corpus.catalog.bands import band_table, selected_bands
from spectral_corpus.corpus_files import LocalFiles
from spectral_corpus.corpus_format import shard_file_key
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.grid import PATCH_PX
from spectral_corpus.stages.materialize import materialize_shard
from spectral_corpus.stages.store import create_patch_array


@dataclass(frozen=True)
class Shard:
    """One shard's observations (with their image href) and the corpus layout it belongs to."""

    index: int
    rows: pd.DataFrame
    bands: np.ndarray
    n_obs: int
    shard_size: int


@dataclass
class Step:
    """Median wall and CPU seconds of one step, and the raw MB it handled."""

    name: str
    wall_s: float
    cpu_s: float
    mb: float


def fullest_shard(corpus: Path) -> Shard:
    """The shard with the most observations (the lowest such index)."""
    reader = CorpusReader(corpus)
    observations = reader.table("observations")
    hrefs = used_images(reader)
    index = int(observations["shard"].value_counts().sort_index().idxmax())
    rows = observations[observations["shard"] == index].assign(
        href=lambda t: t["product"].map(hrefs), train=lambda t: t["split"] == "train"
    )  # the columns pipeline.build passes to materialize_shard
    rules = reader.metadata.rules
    return Shard(index, rows[["obs", "href", "row", "col", "train"]], selected_bands(rules["bands"]), len(observations),
                 rules["shard_size"])  # fmt: skip


def timed(name: str, mb: float, fn: Callable[[], Any], repeats: int) -> tuple[Step, Any]:
    """Run ``fn`` ``repeats`` times; the median wall and CPU seconds, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Step(name, statistics.median(walls), statistics.median(cpus), mb), result


def read_windows(shard: Shard) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """Each scene's bounding window of the shard's cells, as ``materialize`` reads it."""
    blocks = []
    for href, group in shard.rows.groupby("href", sort=True):
        row0, col0 = int(group["row"].min()), int(group["col"].min())
        height, width = int(group["row"].max()) + PATCH_PX - row0, int(group["col"].max()) + PATCH_PX - col0
        with rasterio.open(str(href)) as image:
            window = Window(col0, row0, width, height)
            blocks.append((group, image.read(indexes=[int(b) for b in shard.bands], window=window)))
    return blocks


def decoded_tiles(shard: Shard, read: Step) -> Step:
    """The read step counted in the whole TIFF blocks (tiles or strips) GDAL decodes for the windows (its real work)."""
    windows = shard_windows(shard.rows.rename(columns={"href": "product"}).assign(shard=shard.index))
    hrefs = {str(h): str(h) for h in shard.rows["href"].unique()}
    mb = sum(decoded_bytes(windows, hrefs, len(shard.bands)).values()) / MB
    return Step("  same, counted in decoded TIFF blocks", read.wall_s, read.cpu_s, mb)


def cut(blocks: list[tuple[pd.DataFrame, np.ndarray]], shard: Shard) -> np.ndarray:
    """The shard's patch array (obs, band, y, x) sliced out of the windows."""
    patches = np.empty((len(shard.rows), len(shard.bands), PATCH_PX, PATCH_PX), dtype=np.int16)
    first = int(shard.rows["obs"].min())
    for group, block in blocks:
        r0, c0 = int(group["row"].min()), int(group["col"].min())
        for obs, row, col in zip(group["obs"], group["row"], group["col"], strict=True):
            r, c = int(row) - r0, int(col) - c0
            patches[int(obs) - first] = block[:, r : r + PATCH_PX, c : c + PATCH_PX]
    return patches


def fresh_array(root: Path, shard: Shard) -> zarr.Array:
    """An empty patch array with the corpus's layout under ``root`` (removed first)."""
    shutil.rmtree(root, ignore_errors=True)
    table = band_table().set_index("band").loc[shard.bands]
    return create_patch_array(
        LocalFiles(root), shard.n_obs, table["center_nm"].to_numpy(), table["fwhm_nm"].to_numpy(),
        shard.bands, shard.shard_size,
    )  # fmt: skip


def write_bytes(path: Path, blobs: Sequence[bytes]) -> None:
    """Write the encoded chunks as one file (what the shard file costs without zarr)."""
    with path.open("wb") as f:
        for blob in blobs:
            f.write(blob)


def step_by_step(shard: Shard, work: Path, repeats: int) -> list[Step]:
    """Time each step of a materialize task on its own."""
    first = int(shard.rows["obs"].min())
    step, blocks = timed("read windows (rasterio, 202 bands)", 0.0, lambda: read_windows(shard), repeats)
    window_mb = sum(block.nbytes for _, block in blocks) / MB
    steps = [Step(step.name, step.wall_s, step.cpu_s, window_mb), decoded_tiles(shard, step)]
    step, patches = timed("cut patches (copy)", 0.0, lambda: cut(blocks, shard), repeats)
    raw_mb = patches.nbytes / MB
    steps.append(Step(step.name, step.wall_s, step.cpu_s, raw_mb))
    codec = patch_codec()
    with single_threaded_blosc():
        step, blobs = timed("encode patches (numcodecs, 1 thread)", raw_mb, lambda: [codec.encode(p) for p in patches],
                            repeats)  # fmt: skip
    steps.append(step)
    blob = work / "blob"
    steps.append(timed("write encoded bytes to one file", raw_mb, lambda: write_bytes(blob, blobs), repeats)[0])

    def zarr_write() -> None:
        array = fresh_array(work / "corpus", shard)
        array[first : first + len(patches)] = patches

    steps.append(timed("zarr write of the shard (encode + write)", raw_mb, zarr_write, repeats)[0])
    data = LocalFiles(work / "corpus").read(shard_file_key(shard.index))
    steps.append(timed("sha256 of the shard's bytes", len(data) / MB, lambda: hashlib.sha256(data).hexdigest(),
                       repeats)[0])  # fmt: skip
    return steps


def profile_task(shard: Shard, work: Path) -> tuple[Step, dict[str, float], str]:
    """Run the real ``materialize_shard`` into a fresh array under cProfile."""
    root = work / "corpus"
    fresh_array(root, shard)
    profiler = cProfile.Profile()
    wall, cpu = time.perf_counter(), time.process_time()
    result = profiler.runcall(materialize_shard, LocalFiles(root), shard.index, shard.rows, shard.bands)
    step = Step("materialize_shard (the real task)", time.perf_counter() - wall, time.process_time() - cpu,
                result.raw_bytes / MB)  # fmt: skip
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime").print_stats(18)
    own = {"read_seconds": result.read_seconds, "write_seconds": result.write_seconds}
    return step, own, text.getvalue()


def report(shard: Shard, steps: Sequence[Step], own: dict[str, float], profile: str) -> str:
    """The steps as a Markdown table, the task's own timings and the cProfile listing."""
    env = machine()
    lines = [
        f"{env['date']}  {env['cpu']} x{env['cpu_count']}  zarr {env['versions']['zarr']}  GDAL {env['gdal']}",
        f"shard {shard.index}: {len(shard.rows)} patches from {shard.rows['href'].nunique()} scenes",
        "",
        "| step | wall s | CPU s | MB | MB/s (wall) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {s.name} | {s.wall_s:.3f} | {s.cpu_s:.3f} | {s.mb:.1f} | {s.mb / s.wall_s:.0f} |" for s in steps]
    lines += ["", "task's own timings: " + ", ".join(f"{k} {v:.3f}" for k, v in own.items()), "", profile]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=4, help="example size (default: 4, which fills a shard)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=Path("bench/results/materialize_profile.txt"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Profile the fullest shard, print the report and save it to ``--out``."""
    args = _parser().parse_args(argv)
    corpus = cached_corpus(args.cache, args.replicas)
    shard = fullest_shard(corpus)
    warm_page_cache(corpus.parent / "archive")
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        steps = step_by_step(shard, Path(tmp), args.repeats)
        task, own, profile = profile_task(shard, Path(tmp))
    text = report(shard, [*steps, task], own, profile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
