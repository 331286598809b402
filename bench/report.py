"""The Markdown table of a ``python -m bench`` run (``bench/suite.py``'s JSON record), with its machine and load."""

from __future__ import annotations

import statistics
from typing import Any

OURS, SPECTRALEARTH = "ours", "spectralearth_geotiff"

#: Row labels, in the table's order.
LABELS = {
    OURS: "**ours**: `PatchLoader`, blosc zstd 3 + byte shuffle, int16 batches",
    SPECTRALEARTH: "SpectralEarth layout: a GeoTIFF per patch, rasterio, float32 + `default_collate`",
    "webdataset_npy": "WebDataset: `.npy` in tars, no shuffle",
    "litdata": "LitData: `optimize`, no compression",
    "litdata_zstd": 'LitData: `optimize(compression="zstd")`',
    "mds": "MosaicML Streaming: `MDSWriter`, no compression",
    "mds_zstd": 'MosaicML Streaming: `MDSWriter(compression="zstd")`',
}

#: Why a format can outrun ours where it does, and what it would take to beat it (printed only then).
_RAW = (
    "it decodes nothing (1.0x the raw bytes, against ours' 0.59x) while ours pays the blosc decode (the decode "
    "limit row); in the undisturbed cells of the runs recorded in bench/README.md it lost, because its workers "
    "stack every batch into freshly allocated shared memory, whose page faults cost more than ours' decode into "
    "a reused ring. A figure marked `*` may just be the other job's share. To stay ahead of an uncompressed "
    "format read through a reused buffer, ours would need a faster codec: blosc lz4 + shuffle decodes about 1.9x "
    "faster than zstd 3 at 0.70 of raw (bench/codec_choice.py); wherever bytes cost more than CPU (a cold cache, "
    "a bucket) the 0.59x counts for ours."
)
WHY_FASTER = {
    SPECTRALEARTH: "its GeoTIFFs are uncompressed; see the reasons for the uncompressed formats: " + _RAW,
    "webdataset_npy": _RAW + " WebDataset also reads its tars in order without shuffling (its best case).",
    "litdata": _RAW + " LitData maps its chunk files and reads samples from the mapping.",
    "litdata_zstd": "its zstd frames are inflated in memory by the worker; " + _RAW,
    "mds": _RAW,
    "mds_zstd": (
        "its reader inflated the zstd shards once into raw `.mds` copies in its local cache (1.0x raw on local disk "
        "beside the 0.77x compressed) and reads those: its steady state is uncompressed MDS's. " + _RAW
    ),
}


def _disturbed(cell: dict[str, Any], record: dict[str, Any]) -> bool:
    """Other processes used more than the run's threshold of the CPUs during the cell's median block."""
    return bool(cell.get("others_pct", 0.0) > record.get("disturbed_pct", 10.0))


def _columns(record: dict[str, Any]) -> list[tuple[int, int]]:
    return [(w, b) for b in record["batch_sizes"] for w in record["workers"]]


def _rates(record: dict[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {(c["method"], c["workers"], c["batch_size"]): c for c in record["loaders"]}


def _disk_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    text = f"{entry['ratio_to_raw']:.3f}"
    if "local_cache_ratio_to_raw" in entry:
        text += f" + {entry['local_cache_ratio_to_raw']:.3f} inflated local cache"
    return text


def _memory_cell(
    cells: dict[tuple[str, int, int], dict[str, Any]], method: str, record: dict[str, Any], key: str
) -> str:
    """Per batch size, the largest peak over the worker counts (``key``: a ``WorkerMemory`` figure)."""
    parts = []
    for batch in record["batch_sizes"]:
        memory = [cells[(method, w, batch)]["memory"] for w in record["workers"] if (method, w, batch) in cells]
        if not memory:
            parts.append("-")
        elif key == "peak_rss_mb":
            parts.append(f"{max(m['peak_rss_mb'] for m in memory):.0f} ({max(m['peak_uss_mb'] for m in memory):.0f})")
        else:
            parts.append(f"{max(m[key] for m in memory):.0f}")
    return " / ".join(parts)


def markdown(record: dict[str, Any]) -> str:
    """The run as one Markdown table, the machine and load above it, the notes below."""
    columns = _columns(record)
    cells = _rates(record)
    limit = record["decode_limit"]["per_core"]
    n = record["patches"]
    machine = record["machine"]
    versions = machine["versions"]
    external = [pct for c in record["loaders"] for pct in c["external_cpu_pct"]]
    lines = [
        f"# `python -m bench`: {record['timestamp'].replace('T', ' ').replace('+00:00', ' UTC')}",
        "",
        f"`{record['command']}`" + (" (**quick smoke run: not for quoting**)" if record["quick"] else "") + ". "
        f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs ({machine['cpu_affinity']} usable), "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}; Python {machine['python']}, "
        f"torch {versions['torch']}, numpy {versions['numpy']}, numcodecs {versions['numcodecs']} "
        f"(blosc {versions['blosc']}), "
        f"webdataset {versions['webdataset']}, litdata {versions['litdata']}, mosaicml-streaming "
        f"{versions['mosaicml-streaming']}, zstd {versions['zstd']}; workers {machine['worker_start_method']}ed. "
        f"Load: 1-min load average {record['load_start']['loadavg_1m']} at the start, "
        f"{record['load_end']['loadavg_1m']} at the end; other processes used "
        f"{statistics.median(external) if external else 0:.1f} % of the CPUs in the median timed block "
        f"(max {max(external, default=0):.1f} %). Page cache warm.",
        "",
        f"Loaders: the same {n} patches ({' x '.join(str(s) for s in record['patch_shape'])} int16, "
        f"{record['raw_bytes_per_patch'] / 1e6:.2f} MB raw each) in every format; samples/s of the median of "
        f"{record['blocks']} timed blocks of {record['epochs_per_block']} epochs after a warm-up epoch, persistent "
        "workers; the main process only counts samples. In brackets: **ours / that format** at the same workers "
        "and batch size (> 1: ours is faster); for ours, ours / the decode limit (blosc, one thread, "
        f"{limit:.1f} patches/s per core, x workers).",
        "",
        "| | "
        + " | ".join(f"{w} worker{'s' if w > 1 else ''}, batch {b}" for w, b in columns)
        + " | bytes on disk / raw int16 | peak per worker, MB: RSS (USS), batch "
        + " / ".join(str(b) for b in record["batch_sizes"])
        + " | main process peak RSS, MB, batch "
        + " / ".join(str(b) for b in record["batch_sizes"])
        + " | same pixels as ours |",
        "|---|" + "---:|" * len(columns) + "---:|---:|---:|---|",
    ]
    build = record.get("build")
    if build is not None:
        first = (
            f"**{build['ratio_to_limit']:.2f}** of the read + encode limit: {build['per_core_mb_s']:.1f} vs "
            f"{build['limit_mb_s']:.1f} MB/s per core"
        )
        rest = [f"{build['wall_s']:.1f} s wall, {build['workers']} Dask workers"] + [""] * (len(columns) - 2)
        lines.append(
            f"| **build** (replicas {build['replicas']}: {build['scene_raw_mb']:.0f} MB of scenes -> "
            f"{build['observations']} patches) | {first} | "
            + " | ".join(rest[: len(columns) - 1])
            + f" | {build['compression_ratio']:.3f} | {build['worker_peak_rss_mb']:.0f} (a Dask worker) | - | - |"
        )
    faster: list[str] = []
    for method in [OURS, SPECTRALEARTH, *[m for m in LABELS if m not in (OURS, SPECTRALEARTH)]]:
        if not any((method, w, b) in cells for w, b in columns):
            continue
        row = []
        for w, b in columns:
            cell, ours = cells.get((method, w, b)), cells.get((OURS, w, b))
            if cell is None or ours is None:
                row.append("-")
                continue
            rate = cell["samples_per_s"]
            star = " *" if _disturbed(cell, record) else ""
            if method == OURS:
                row.append(f"**{rate:.1f}**{star} ({rate / (limit * w):.2f} of limit)")
                continue
            ratio = ours["samples_per_s"] / rate
            mark = " †" if ratio < 1 else ""
            row.append(f"{rate:.1f}{star} ({ratio:.2f}x{mark})")
            if ratio < 1:
                quiet = "" if not (star or _disturbed(ours, record)) else " (* one of the two disturbed)"
                faster.append(
                    f"{method} at {w} worker{'s' if w > 1 else ''}, batch {b}: {rate:.1f} vs ours "
                    f"{ours['samples_per_s']:.1f}{quiet}"
                )
        checked = record["pixel_check"].get(method, {}).get("observations")
        same = f"yes, {checked} / {n} (= zarr)" if method == OURS else (f"yes, {checked} / {n}" if checked else "-")
        lines.append(
            f"| {LABELS.get(method, method)} | " + " | ".join(row) + f" | {_disk_cell(record['disk'].get(method))} | "
            f"{_memory_cell(cells, method, record, 'peak_rss_mb')} | "
            f"{_memory_cell(cells, method, record, 'main_peak_rss_mb')} | {same} |"
        )
    lines.append(
        "| decode limit (blosc, 1 thread, x workers) | "
        + " | ".join(f"{limit * w:.1f}" for w, _ in columns)
        + " | | | | |"
    )
    lines += ["", _notes(record, faster, cells)]
    return "\n".join(lines) + "\n"


def _notes(record: dict[str, Any], faster: list[str], cells: dict[tuple[str, int, int], dict[str, Any]]) -> str:
    disturbed = [c for c in cells.values() if _disturbed(c, record)]
    retried = [c for c in cells.values() if c.get("attempts")]
    notes = [
        "Notes:",
        f"- `*`: other processes used more than {record.get('disturbed_pct', 10.0):g} % of the CPUs during that "
        f"cell's median block ({len(disturbed)} of {len(cells)} cells). A disturbed cell is measured once more "
        f"after waiting for quiet CPUs, and the quieter try is kept ({len(retried)} cells had a second try, within "
        "the run's budget for them). A `*` figure can be low by up to that share; with one worker the other core "
        "often absorbs the other job.",
        "- Bytes on disk: files of each format over the raw int16 bytes of the patches it holds (ours: the shard "
        "files of the whole `patches.zarr`; the SpectralEarth layout: the GeoTIFFs). Peak RSS: the largest RSS "
        "of any one loader worker process while that loader ran (psutil, every 0.1 s), the largest over 1 and 2 "
        "workers. RSS counts the pages a forked worker shares with the main process and the shared memory it "
        "touches (ours: the ring slots it decodes into); USS only its private pages. The main process's peak RSS "
        "includes ours' ring of (2 x workers + 2) batches in shared memory, allocated once.",
        f"- Same pixels: one epoch of each loader at {record['pixel_check_at']['workers']} workers, batch "
        f"{record['pixel_check_at']['batch']}, SHA-1 of each int16 image per obs id, against "
        "`CorpusReader.read_patch` (zarr-python); every observation exactly once. The run stops on any difference.",
    ]
    check = record["pixel_check"]
    if "mds_zstd" in check and "mds" in check:
        notes.append(
            f"- MDS with zstd: its first epoch (the pixel check's) inflates every shard into the local cache: "
            f"{check['mds_zstd']['seconds']:.1f} s against {check['mds']['seconds']:.1f} s for the same pass over "
            "raw MDS; the timed epochs read the inflated copy."
        )
    if faster:
        notes.append("- Faster than ours († above): " + "; ".join(faster) + ".")
        for method in dict.fromkeys(item.split(" at ")[0] for item in faster):
            notes.append(f"  - {method}: {WHY_FASTER.get(method, '')}")
    else:
        notes.append("- No format was faster than ours at any workers and batch size in this run.")
    return "\n".join(notes)
