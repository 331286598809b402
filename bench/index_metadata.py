"""Indexing benchmark: ``index_archive``'s cost per product against a whole-file parse of each METADATA.XML.

Run from the repository root::

    python bench/index_metadata.py [--products 300] [--cold] [--out bench/results/index_metadata.jsonl]

It writes ``--products`` products in DLR's delivery layout (cached under ``--cache``; never timed): three
order folders ``dims_op_oc_oc-en_<order>_1/ENMAP.HSI.L2A/<product>/``, holding half of the products
unpacked (``<product>/<files>``), a quarter as ``ZIP_STORED`` and a quarter as ``ZIP_DEFLATED``
``<product>.ZIP`` files. Each product has every file of a real one (rasters are 16-byte placeholders:
indexing opens no raster) and a METADATA.XML of the real size: the real test product's metadata with a
224-band table and its own name, datatake, tile and dates, written by ``metadata_xml`` with
``--padding`` bytes of filler RPCs. Timed, on a warm page cache (median of ``--repeats``):

1. ``index_archive(root)`` on the whole archive and on each order folder: wall and CPU s per product, and
   the METADATA.XML bytes ``read_metadata`` read (``bytes_read``: the head it parses and the tail it
   searches for the projection, summed through a wrapper) and the bytes the process read from files
   (``rchar``: ZIP directories and compressed members included);
2. per product, its METADATA.XML opened as ``index_archive`` opens it, then read with ``read_metadata``
   (head and tail) or with ``ET.parse`` (the whole file: the baseline, ``--baseline-repeats`` passes);
3. the same two readers on the real test product's METADATA.XML, in memory;
4. the whole-file parses of 2 and 3 in a new interpreter, and ``index_archive`` (per order folder, then
   on all) in another: both depend on the process's history (see ``time_fresh_process``); a build
   indexes in a process much like the second.

With ``--cold`` (needs root), 1 (``--cold-repeats`` passes) and the baseline of 2 (one pass) run again,
each pass after ``sync; echo 3 > /proc/sys/vm/drop_caches``, with the bytes read from storage. The
per-product CPU time of 1 gives the extrapolation to SpectralEarth's 11,636 products on one core. One
JSON line per run is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import hashlib
import inspect
import json
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import psutil
from build_throughput import DEFAULT_CACHE, machine, machine_cpu
from machine_load import system_load, wait_for_quiet

from spectral_corpus.catalog import archive as catalog_archive
from spectral_corpus.catalog import metadata as catalog_metadata
from spectral_corpus.catalog.archive import index_archive
from spectral_corpus.catalog.bands import N_BANDS, REFLECTANCE_SCALE, band_table
from spectral_corpus.catalog.metadata import Bands, ProductMetadata, metadata_xml, parse_metadata, read_metadata
from spectral_corpus.catalog.product import ASSET_SUFFIXES, product_filename
from spectral_corpus.catalog.scenes import OK

REAL_XML = Path(
    "tests/data/real/ENMAP01-____L2A-DT0000326721_20170626T102020Z_001_V000204_20200406T201930Z-METADATA.XML.gz"
)
SPECTRALEARTH_PRODUCTS = 11_636
#: The issue's figure: 11,636 whole METADATA.XML files of about 4.2 MB.
WHOLE_FILE_GB = 48.0
LIMIT_MINUTES = 5.0
LAYOUTS = {"folder": None, "zip_stored": zipfile.ZIP_STORED, "zip_deflated": zipfile.ZIP_DEFLATED}
#: The files of a product beside METADATA.XML (placeholders here), as in DLR's deliveries.
OTHER_FILES = (
    *(f"{suffix}.TIF" for key, suffix in ASSET_SUFFIXES.items() if key != "metadata"),
    "QL_VNIR.TIF",
    "QL_SWIR.TIF",
    "HISTORY.XML",
)
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)


# --- products ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """Where one generated product is: a folder (``member`` None) or a ZIP file and its METADATA.XML member."""

    name: str
    layout: str
    path: Path
    member: str | None = None


def real_xml() -> bytes:
    """The real METADATA.XML of DLR's test product (4.2 MB)."""
    return gzip.decompress(REAL_XML.read_bytes())


def product_metadata(template: ProductMetadata, k: int, rng: np.random.Generator) -> ProductMetadata:
    """The real product's metadata as the ``k``-th product: its own name, datatake, tile, dates and 224 bands."""
    table = band_table()
    centres = table["center_nm"].to_numpy() + rng.uniform(-0.4, 0.4) + rng.normal(0, 0.02, N_BANDS)
    acquired = datetime(2023, 1, 1, 10, tzinfo=UTC) + timedelta(days=k // 3, seconds=int(rng.integers(0, 3600)))
    processed = acquired + timedelta(days=30)
    datatake, tile, version = 10_000 + k // 3, 1 + k % 3, "010402"
    name = (
        f"ENMAP01-____L2A-DT{datatake:010d}_{acquired:%Y%m%dT%H%M%SZ}_{tile:03d}_V{version}_{processed:%Y%m%dT%H%M%SZ}"
    )
    bands = Bands(
        tuple(np.round(centres, 3).tolist()),
        tuple(table["fwhm_nm"].round(3).tolist()),
        (REFLECTANCE_SCALE,) * N_BANDS,
        (0.0,) * N_BANDS,
    )
    return dataclasses.replace(
        template,
        name=name,
        datatake=datatake,
        tile=tile,
        processor="01.04.02",
        acquired=acquired,
        processed=processed,
        n_bands=N_BANDS,
        bands=bands,
        cloud_cover=float(rng.integers(0, 30)),
    )


def layout_of(k: int, n: int) -> str:
    """Half folders, then a quarter stored ZIPs, then deflated ZIPs."""
    return "folder" if k < n // 2 else "zip_stored" if k < n // 2 + (n - n // 2 + 1) // 2 else "zip_deflated"


def order_folder(root: Path, layout: str) -> Path:
    """The DLR order folder of a layout (one per layout, so each can be indexed alone)."""
    return root / f"dims_op_oc_oc-en_70123456{list(LAYOUTS).index(layout)}_1"


def write_products(root: Path, n: int, padding: int, seed: int) -> list[Product]:
    """Write ``n`` products under ``root`` in DLR's order layout; return where each is."""
    template = parse_metadata(real_xml(), str(REAL_XML))
    rng = np.random.default_rng(seed)
    products = []
    for layout in LAYOUTS:
        order = order_folder(root, layout)
        (order / "iif").mkdir(parents=True)
        (order / "tools").mkdir()
        (order / "readme.html").write_text("<html><body>Benchmark order.</body></html>\n")
    for k in range(n):
        meta = product_metadata(template, k, rng)
        files = {f"{meta.name}-{suffix}": b"placeholder 16 B" for suffix in OTHER_FILES}
        xml_name = product_filename(meta.name, "metadata")
        files[xml_name] = metadata_xml(meta, files=sorted([*files, xml_name]), padding=padding)
        layout = layout_of(k, n)
        item = order_folder(root, layout) / "ENMAP.HSI.L2A" / meta.name
        if LAYOUTS[layout] is None:
            (item / meta.name).mkdir(parents=True)
            for file, data in files.items():
                (item / meta.name / file).write_bytes(data)
            products.append(Product(meta.name, layout, item / meta.name))
            continue
        item.mkdir(parents=True)
        path = item / f"{meta.name}.ZIP"
        with zipfile.ZipFile(path, "w", LAYOUTS[layout]) as zf:
            for file, data in sorted(files.items()):
                info = zipfile.ZipInfo(f"{meta.name}/{file}", _ZIP_TIME)
                info.external_attr, info.compress_type = 0o644 << 16, LAYOUTS[layout]
                zf.writestr(info, data)
        products.append(Product(meta.name, layout, path, f"{meta.name}/{xml_name}"))
    return products


def cached_products(cache: Path, n: int, padding: int, seed: int) -> tuple[Path, list[Product], float]:
    """The archive of ``n`` products (generated once per N, padding, seed and generator source), and the s it took."""
    generator = [inspect.getsource(fn) for fn in (write_products, product_metadata, layout_of, order_folder)]
    source = Path(catalog_metadata.__file__).read_text() + "".join(generator) + repr(OTHER_FILES)
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    base = cache / f"index-n{n}-p{padding}-s{seed}-{key}"
    done = base / "COMPLETE"
    if done.exists():
        listing = json.loads(done.read_text())
        return base / "archive", [Product(p[0], p[1], Path(p[2]), p[3]) for p in listing["products"]], 0.0
    shutil.rmtree(base, ignore_errors=True)
    started = time.perf_counter()
    products = write_products(base / "archive", n, padding, seed)
    seconds = time.perf_counter() - started
    listing = [[p.name, p.layout, str(p.path), p.member] for p in products]
    done.write_text(json.dumps({"products": listing, "seconds": seconds}))
    return base / "archive", products, seconds


@contextmanager
def open_metadata(product: Product) -> Iterator[IO[bytes]]:
    """The product's METADATA.XML stream, opened as ``index_archive`` opens it."""
    if product.member is None:
        with open(product.path / product_filename(product.name, "metadata"), "rb") as stream:
            yield stream
        return
    with zipfile.ZipFile(product.path) as archive, archive.open(product.member) as stream:
        yield stream


def xml_size(product: Product) -> int:
    """Bytes of the product's METADATA.XML (uncompressed)."""
    if product.member is None:
        return product.path.joinpath(product_filename(product.name, "metadata")).stat().st_size
    with zipfile.ZipFile(product.path) as archive:
        return archive.getinfo(product.member).file_size


# --- timing --------------------------------------------------------------------------------------


@dataclass
class Timing:
    """One timed pass: wall and CPU s, bytes read through ``read()`` (rchar) and from storage, others' CPU s."""

    wall_s: float
    cpu_s: float
    rchar: int
    storage_bytes: int
    other_cpu_s: float


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    """Run ``fn`` once, timing it and accounting what it read and what other processes used meanwhile."""
    me = psutil.Process()
    io, cpu = me.io_counters(), time.process_time()
    with machine_cpu() as account:
        started = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - started
        own = time.process_time() - cpu
    after = me.io_counters()
    timing = Timing(
        wall, own, after.read_chars - io.read_chars, after.read_bytes - io.read_bytes, max(0.0, account.busy_s - own)
    )
    return timing, result


@contextmanager
def counting_reads(counts: list[int]) -> Iterator[None]:
    """Append ``bytes_read`` of every ``read_metadata`` call ``index_archive`` makes to ``counts``."""
    original = catalog_archive.read_metadata

    def counted(stream: IO[bytes], source: str, **kwargs: Any) -> Any:
        result = original(stream, source, **kwargs)
        counts.append(result.bytes_read)
        return result

    catalog_archive.read_metadata = counted  # type: ignore[assignment]
    try:
        yield
    finally:
        catalog_archive.read_metadata = original


def drop_page_cache() -> str | None:
    """Empty the kernel's page cache; None when done, else why not."""
    try:
        subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        return (error.stderr.decode(errors="replace").strip() or f"exit status {error.returncode}")[:200]
    return None


def summary(timings: Sequence[Timing], n: int) -> dict[str, Any]:
    """Median and best of repeated passes over ``n`` products, per product (ms, bytes)."""
    return {
        "passes": len(timings),
        "wall_ms_per_product": 1e3 * statistics.median(t.wall_s for t in timings) / n,
        "cpu_ms_per_product": 1e3 * statistics.median(t.cpu_s for t in timings) / n,
        "best_cpu_ms_per_product": 1e3 * min(t.cpu_s for t in timings) / n,
        "rchar_per_product": statistics.median(t.rchar for t in timings) / n,
        "storage_bytes_per_product": statistics.median(t.storage_bytes for t in timings) / n,
        "other_cpu_s": [round(t.other_cpu_s, 3) for t in timings],
    }


def time_index(root: Path, n: int, repeats: int, cold: bool = False) -> dict[str, Any]:
    """``index_archive(root)`` ``repeats`` times (page cache dropped before each when ``cold``)."""
    timings, counts = [], []
    for _ in range(repeats):
        counts.clear()
        if cold:
            drop_page_cache()
        with counting_reads(counts):
            timing, records = timed(lambda: index_archive(root))
        timings.append(timing)
    rejected = [r for r in records if r.status != OK]
    if len(records) != n or len(counts) != n or rejected:
        raise SystemExit(f"{root}: {len(records)} records, {len(rejected)} rejected: {rejected[:1]}")
    return {**summary(timings, n), "xml_bytes_parsed_per_product": sum(counts) / n}


def time_readers(products: Sequence[Product], repeats: int, baseline_repeats: int) -> dict[str, Any]:
    """Each product's METADATA.XML opened and read by ``read_metadata`` (head) and by ``ET.parse`` (whole)."""
    out = {"read_metadata": time_reader(products, _head, repeats)}
    out["read_metadata"]["xml_bytes_parsed_per_product"] = out["read_metadata"].pop("result_per_product")
    out["whole_file_et_parse"] = time_reader(products, _whole, baseline_repeats)
    out["whole_file_et_parse"].pop("result_per_product")
    return out


def _head(stream: IO[bytes], source: str) -> int:
    return read_metadata(stream, source).bytes_read


def _whole(stream: IO[bytes], source: str) -> int:
    ET.parse(stream)
    return 0


def time_reader(
    products: Sequence[Product], reader: Callable[[IO[bytes], str], int], repeats: int, cold: bool = False
) -> dict[str, Any]:
    """``reader`` on each product's METADATA.XML, opened as ``index_archive`` opens it, ``repeats`` times."""

    def run() -> int:
        total = 0
        for product in products:
            with open_metadata(product) as stream:
                total += reader(stream, str(product.path))
        return total

    timings = []
    for _ in range(repeats):
        if cold:
            drop_page_cache()
        timing, total = timed(run)
        timings.append(timing)
    return {**summary(timings, len(products)), "result_per_product": total / len(products)}


def pooled(parts: dict[str, dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
    """Per-product figures of several layouts as one mix, weighted by their product counts."""
    n = sum(counts.values())
    keys = [k for k, v in next(iter(parts.values())).items() if k.endswith("_per_product") and isinstance(v, float)]
    return {key: sum(parts[layout][key] * counts[layout] for layout in parts) / n for key in keys}


#: Run by ``time_fresh_process`` in new interpreters: ``parse`` with only the standard library loaded,
#: ``index`` with the catalog loaded (not the build's dask and pipeline modules).
_FRESH = """
import gc, gzip, io, json, statistics, sys, time, zipfile, xml.etree.ElementTree as ET
spec = json.load(sys.stdin)
def cpu(fn):
    started = time.process_time(); fn(); return time.process_time() - started
def parse(path, member):
    if member is None:
        with open(path, "rb") as f: ET.parse(f)
    else:
        with zipfile.ZipFile(path) as z, z.open(member) as f: ET.parse(f)
out = {"objects": len(gc.get_objects())}
if spec["mode"] == "parse":
    real = gzip.decompress(open(spec["real"], "rb").read())
    out["real_cpu_ms"] = 1e3 * statistics.median(cpu(lambda: ET.parse(io.BytesIO(real))) for _ in range(5))
    out["cpu_ms_per_product"] = 1e3 * statistics.median(
        cpu(lambda: [parse(p, m) for p, m in spec["products"]]) for _ in range(spec["repeats"])
    ) / len(spec["products"])
else:
    from pathlib import Path
    from spectral_corpus.catalog.archive import index_archive
    out["objects"] = len(gc.get_objects())
    for name, (root, n) in spec["roots"].items():
        first = cpu(lambda: index_archive(Path(root)))
        out[name] = {"first_pass_cpu_ms_per_product": 1e3 * first / n, "cpu_ms_per_product": 1e3 * statistics.median(
            cpu(lambda: index_archive(Path(root))) for _ in range(spec["repeats"])) / n}
print(json.dumps(out))
"""


def time_fresh_process(root: Path, products: Sequence[Product], repeats: int) -> dict[str, Any]:
    """Whole-file parses, and ``index_archive`` per order folder then on all, each in a new interpreter.

    The whole-file parse allocates an element per XML node, so Python's cyclic garbage collector runs often
    and each full collection walks every object of the process: with the build's modules loaded (as here)
    the parse costs about twice what it costs in a bare interpreter. ``index_archive`` on ZIP members
    depends on the process's history too (glibc's malloc serves the 4 MB blocks ``zipfile`` reads either
    from its heap or, in a new process, from fresh pages).
    """
    files = [
        [str(p.path / product_filename(p.name, "metadata")), None] if p.member is None else [str(p.path), p.member]
        for p in products
    ]
    roots = {layout: [str(order_folder(root, layout)), sum(p.layout == layout for p in products)] for layout in LAYOUTS}
    specs = {
        "whole_file_et_parse": {"mode": "parse", "real": str(REAL_XML), "products": files, "repeats": repeats},
        "index_archive": {"mode": "index", "roots": {**roots, "all": [str(root), len(products)]}, "repeats": repeats},
    }
    out = {}
    for name, spec in specs.items():
        children = psutil.Process().cpu_times()
        with machine_cpu() as account:
            done = subprocess.run(
                [sys.executable, "-c", _FRESH], input=json.dumps(spec), capture_output=True, text=True, check=True
            )
        after = psutil.Process().cpu_times()
        own = after.children_user + after.children_system - children.children_user - children.children_system
        out[name] = {**json.loads(done.stdout), "other_cpu_s": max(0.0, account.busy_s - own)}
    return out


def time_real_file(repeats: int) -> dict[str, Any]:
    """Both readers on the real METADATA.XML in memory: CPU ms (median) and bytes parsed."""
    import io

    data = real_xml()
    head = []
    for _ in range(repeats):
        started = time.process_time()
        read = read_metadata(io.BytesIO(data), str(REAL_XML))
        head.append(time.process_time() - started)
    whole = []
    for _ in range(repeats):
        started = time.process_time()
        ET.parse(io.BytesIO(data))
        whole.append(time.process_time() - started)
    return {
        "bytes": len(data),
        "bands": read.metadata.n_bands,
        "read_metadata_cpu_ms": 1e3 * statistics.median(head),
        "read_metadata_bytes": read.bytes_read,
        "whole_file_et_parse_cpu_ms": 1e3 * statistics.median(whole),
    }


# --- one run -----------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the products, time everything, and return the result row."""
    root, products, generated_s = cached_products(args.cache, args.products, args.padding, args.seed)
    n = len(products)
    by_layout = {layout: [p for p in products if p.layout == layout] for layout in LAYOUTS}
    xml_sizes = [xml_size(p) for p in products]
    load = {"before": wait_for_quiet(args.wait_quiet, 10.0)}
    time_index(root, n, 1)  # warms the page cache and the imports
    row: dict[str, Any] = {
        "index_archive": {
            "all": time_index(root, n, args.repeats),
            **{
                layout: time_index(order_folder(root, layout), len(ps), args.repeats)
                for layout, ps in by_layout.items()
            },
        },
        "readers": {layout: time_readers(ps, args.repeats, args.baseline_repeats) for layout, ps in by_layout.items()},
        "real_file": time_real_file(max(args.repeats, 5)),
        "fresh_process": time_fresh_process(root, products, args.baseline_repeats),
        "objects_in_process": len(gc.get_objects()),
    }
    counts = {layout: len(ps) for layout, ps in by_layout.items()}
    row["readers"]["all"] = {
        reader: pooled({layout: row["readers"][layout][reader] for layout in LAYOUTS}, counts)
        for reader in ("read_metadata", "whole_file_et_parse")
    }
    load["after_warm"] = system_load()
    if args.cold:
        why = drop_page_cache()
        row["cold"] = {"available": why is None, "why_not": why}
        if why is None:
            row["cold"]["index_archive"] = time_index(root, n, args.cold_repeats, cold=True)
            whole = time_reader(products, _whole, 1, cold=True)
            whole.pop("result_per_product")
            row["cold"]["whole_file_et_parse"] = whole
            load["after_cold"] = system_load()
    context = {
        **machine(),
        "products": n,
        "layouts": {k: len(v) for k, v in by_layout.items()},
        "xml_bytes_mean": statistics.mean(xml_sizes),
        "padding": args.padding,
        "repeats": args.repeats,
        "products_generated_s": generated_s,
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "load": load,
    }
    row = {**context, **row}
    return _rounded({**row, "extrapolation": extrapolate(row)})


def git_commit() -> str | None:
    """The checked-out commit, with ``+dirty`` when ``catalog/`` has uncommitted changes (the code timed)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "catalog"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def extrapolate(row: dict[str, Any]) -> dict[str, Any]:
    """SpectralEarth's 11,636 products on one core, from the per-product figures of the whole archive."""
    index, whole = row["index_archive"]["all"], row["readers"]["all"]["whole_file_et_parse"]
    fresh_whole = row["fresh_process"]["whole_file_et_parse"]["cpu_ms_per_product"]
    fresh_index = row["fresh_process"]["index_archive"]
    worst = max(row["index_archive"][layout]["cpu_ms_per_product"] for layout in LAYOUTS)
    out = {
        "products": SPECTRALEARTH_PRODUCTS,
        "limit_minutes": LIMIT_MINUTES,
        "index_cpu_minutes": index["cpu_ms_per_product"] * SPECTRALEARTH_PRODUCTS / 6e4,
        "index_wall_minutes": index["wall_ms_per_product"] * SPECTRALEARTH_PRODUCTS / 6e4,
        "index_cpu_minutes_slowest_layout": worst * SPECTRALEARTH_PRODUCTS / 6e4,
        "whole_file_parse_cpu_minutes": whole["cpu_ms_per_product"] * SPECTRALEARTH_PRODUCTS / 6e4,
        "ratio_whole_file_to_index_cpu": whole["cpu_ms_per_product"] / index["cpu_ms_per_product"],
        "ratio_whole_file_to_read_metadata_cpu": whole["cpu_ms_per_product"]
        / row["readers"]["all"]["read_metadata"]["cpu_ms_per_product"],
        "fresh_whole_file_parse_cpu_minutes": fresh_whole * SPECTRALEARTH_PRODUCTS / 6e4,
        "fresh_index_cpu_minutes": fresh_index["all"]["cpu_ms_per_product"] * SPECTRALEARTH_PRODUCTS / 6e4,
        "fresh_index_cpu_minutes_slowest_layout": max(fresh_index[k]["cpu_ms_per_product"] for k in LAYOUTS)
        * SPECTRALEARTH_PRODUCTS
        / 6e4,
        "ratio_fresh_whole_file_to_fresh_index_cpu": fresh_whole / fresh_index["all"]["cpu_ms_per_product"],
        "xml_gb_parsed": index["xml_bytes_parsed_per_product"] * SPECTRALEARTH_PRODUCTS / 1e9,
        "rchar_gb": index["rchar_per_product"] * SPECTRALEARTH_PRODUCTS / 1e9,
        "whole_file_gb_issue": WHOLE_FILE_GB,
        "whole_file_xml_gb": row["xml_bytes_mean"] * SPECTRALEARTH_PRODUCTS / 1e9,
        "whole_file_rchar_gb": whole["rchar_per_product"] * SPECTRALEARTH_PRODUCTS / 1e9,
    }
    cold = row.get("cold", {})
    if cold.get("available"):
        out["cold_index_wall_minutes"] = cold["index_archive"]["wall_ms_per_product"] * SPECTRALEARTH_PRODUCTS / 6e4
        out["cold_storage_gb"] = cold["index_archive"]["storage_bytes_per_product"] * SPECTRALEARTH_PRODUCTS / 1e9
    return out


def _rounded(values: Any) -> Any:
    """Floats rounded to 4 significant decimals, in nested dicts and lists too."""
    if isinstance(values, dict):
        return {k: _rounded(v) for k, v in values.items()}
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return round(values, 4) if isinstance(values, float) else values


def format_table(row: dict[str, Any]) -> str:
    """The run as text: per layout, per-product figures; then the extrapolation."""
    index, x = row["index_archive"], row["extrapolation"]
    lines = [
        f"{row['date']}  {row['cpu']} x{row['cpu_count']}  {row['products']} products "
        f"{row['layouts']}  XML {row['xml_bytes_mean'] / 1e6:.2f} MB  load {row['load']['before']}",
        f"{'per product':<44}" + "".join(f"{k:>14}" for k in ("all", *LAYOUTS)),
    ]
    cells: list[tuple[str, Callable[[str], Any]]] = [
        ("index_archive wall ms", lambda k: index[k]["wall_ms_per_product"]),
        ("index_archive CPU ms", lambda k: index[k]["cpu_ms_per_product"]),
        ("index_archive XML KB read (head + tail)", lambda k: index[k]["xml_bytes_parsed_per_product"] / 1e3),
        ("index_archive KB read (rchar)", lambda k: index[k]["rchar_per_product"] / 1e3),
        ("open + read_metadata CPU ms", lambda k: _reader(row, k, "read_metadata")),
        ("open + ET.parse whole file CPU ms", lambda k: _reader(row, k, "whole_file_et_parse")),
        (
            "whole-file parse / index_archive (CPU)",
            lambda k: _reader(row, k, "whole_file_et_parse") / index[k]["cpu_ms_per_product"],
        ),
    ]
    lines += [f"{label:<44}" + "".join(f"{fn(k):>14.3f}" for k in ("all", *LAYOUTS)) for label, fn in cells]
    real = row["real_file"]
    lines.append(
        f"real METADATA.XML ({real['bytes'] / 1e6:.2f} MB): read_metadata {real['read_metadata_cpu_ms']:.2f}"
        f" ms ({real['read_metadata_bytes'] / 1e3:.0f} KB), ET.parse {real['whole_file_et_parse_cpu_ms']:.1f} ms"
    )
    fresh = row["fresh_process"]
    lines.append(
        f"{'new interpreter: index_archive CPU ms':<44}"
        + "".join(f"{fresh['index_archive'][k]['cpu_ms_per_product']:>14.3f}" for k in ("all", *LAYOUTS))
    )
    lines.append(
        f"new interpreter: whole-file parse {fresh['whole_file_et_parse']['cpu_ms_per_product']:.1f} ms per product"
        f" (real XML {fresh['whole_file_et_parse']['real_cpu_ms']:.1f} ms); / index_archive"
        f" {x['ratio_fresh_whole_file_to_fresh_index_cpu']:.1f}"
    )
    if "cold" in row:
        cold = row["cold"]
        lines.append(
            f"cold cache: {cold['why_not']}"
            if not cold["available"]
            else f"cold: index_archive wall {cold['index_archive']['wall_ms_per_product']:.2f} ms, CPU "
            f"{cold['index_archive']['cpu_ms_per_product']:.2f} ms, storage "
            f"{cold['index_archive']['storage_bytes_per_product'] / 1e3:.0f} KB per product; whole-file "
            f"parse wall {cold['whole_file_et_parse']['wall_ms_per_product']:.1f} ms"
        )
    lines.append(
        f"11,636 products, one core: index {x['index_cpu_minutes']:.2f} min CPU ({x['index_wall_minutes']:.2f}"
        f" wall; slowest layout {x['index_cpu_minutes_slowest_layout']:.2f}) vs limit {LIMIT_MINUTES} min;"
        f" whole-file parse {x['whole_file_parse_cpu_minutes']:.1f} min; XML parsed {x['xml_gb_parsed']:.2f}"
        f" GB (read {x['rchar_gb']:.2f} GB) vs {x['whole_file_xml_gb']:.1f} GB whole files"
    )
    return "\n".join(lines)


def _reader(row: dict[str, Any], layout: str, reader: str) -> float:
    readers = row["readers"]["all"] if layout == "all" else row["readers"][layout]
    return float(readers[reader]["cpu_ms_per_product"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=300, help="products to generate (default: 300)")
    parser.add_argument("--padding", type=int, default=4_000_000, help="filler RPC bytes per METADATA.XML")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per figure (median kept)")
    parser.add_argument("--cold", action="store_true", help="also time with the page cache dropped (needs root)")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="passes of the whole-file parse")
    parser.add_argument("--cold-repeats", type=int, default=2, help="passes with the page cache dropped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the products go")
    parser.add_argument("--out", type=Path, default=Path("bench/results/index_metadata.jsonl"))
    parser.add_argument("--wait-quiet", type=float, default=30.0, help="seconds to wait for idle CPUs first")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, append its row to ``--out`` and print the table."""
    args = _parser().parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    row = bench(args)
    with args.out.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    print(format_table(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
