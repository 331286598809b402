"""Build with products or corpus in an S3 bucket against the same build on local disk, same run.

On the same example products (``catalog.synth.write_example(seed, replicas)``, cached as the other
benchmarks do, generated outside the timed parts), three builds (``build_corpus``, a local cluster of
``--workers`` single-threaded Dask workers, wall time from catalog to commit, cluster start included):

A. products on local disk (the example's STAC items, local hrefs) -> corpus on local disk;
B. the same products copied into a bucket, read through the same STAC items with ``s3://`` and
   ``/vsizip//vsis3/`` hrefs (GDAL's ranged reads) -> corpus on local disk;
C. products on local disk -> corpus written into the bucket (``out="s3://bench/corpus-c/N"``: obstore,
   a lease object, a conditional PUT of ``CURRENT``).

With ``--repeats N`` the builds run A, B, C, A, B, C, ... and the fastest of each kind is reported
(every repeat's wall time is kept in the row). The bucket is moto's S3 server on 127.0.0.1
(``tests/s3_server.py``, a process of its own). Every client (this process, the Dask workers, GDAL and
obstore in them) reaches it through a small counting reverse proxy in another process
(``AWS_ENDPOINT_URL`` points at the proxy), which counts requests and the body bytes each way, per key
prefix and per key: so B reports the bytes it requested from the products per kept patch and against
what the products hold (per kind of file, too), and C the bytes it uploaded. The copy into the bucket
goes straight to moto and is neither counted nor timed. A, B and C must give the same observations and
patches; the script fails (and records nothing) if they do not.

moto is a Python server that serves one ranged GET at about 90 MB/s here: the bucket figures are bound
by it (and, a little, by the proxy), not by the build, and say nothing of what a real object store
delivers to many workers.

    python bench/build_object_store.py [--replicas 4] [--workers 2] [--repeats 1] [--wait-quiet 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from build_throughput import (
    DEFAULT_CACHE,
    WorkerSampler,
    cached_products,
    machine,
    machine_cpu,
    stage_timer,
    warm_page_cache,
)
from machine_load import system_load, wait_for_quiet

from s3_server import create_bucket, s3_server, upload
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.corpus_format import PATCH_ARRAY
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.rules import Rules

RESULTS = Path(__file__).parent / "results" / "build_object_store.jsonl"
BUCKET = "bench"
PRODUCTS = "products"  # key prefix of the products in the bucket
CORPUS = "corpus-c"  # key prefix of build C's corpus
#: Observation columns that must be equal between the builds (with the patches themselves).
KEY = ["obs", "product", "epsg", "ix", "iy", "row", "col"]
MB = 1e6

# --- the counting proxy (its own process, so it takes no GIL from the build's client and scheduler) ----

#: Headers that belong to one connection (RFC 9110 section 7.6.1), never forwarded; Expect is answered here.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "expect"}
)
_BLOCK = 1 << 20
_CONTROL = "/_bench/counts"  # not a valid bucket name: never an S3 request


def key_prefix(target: str) -> str:
    """Which part of the bucket a request is for: its key's first path segment, or a listing's ``prefix``.

    ``/bench/products/A/B.TIF?x`` -> ``products``; ``/bench?list-type=2&prefix=corpus-c/_build`` ->
    ``corpus-c``; the bucket itself -> ``bucket``.
    """
    parts = urlsplit(target)
    segments = parts.path.lstrip("/").split("/", 2)
    if len(segments) > 2 or (len(segments) == 2 and segments[1]):
        return segments[1]
    prefix = parse_qs(parts.query).get("prefix", [""])[0]
    return prefix.split("/", 1)[0] or "bucket"


class Counts:
    """Requests and body bytes per (key prefix, method), and GETs and bytes per key; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.table: dict[str, dict[str, list[int]]] = {}
        self.gets: dict[str, list[int]] = {}

    def add(self, target: str, method: str, sent: int, received: int) -> None:
        """One request for ``target`` of ``sent`` body bytes whose answer carried ``received`` body bytes."""
        with self.lock:
            cell = self.table.setdefault(key_prefix(target), {}).setdefault(method, [0, 0, 0])
            cell[0] += 1
            cell[1] += sent
            cell[2] += received
            if method == "GET":
                got = self.gets.setdefault(unquote(urlsplit(target).path).lstrip("/"), [0, 0])
                got[0] += 1
                got[1] += received

    def take(self) -> dict[str, Any]:
        """The counts since the last take, as JSON (``gets``: bucket/key -> [GETs, bytes]); starts from zero."""
        with self.lock:
            table, gets, self.table, self.gets = self.table, self.gets, {}, {}
        prefixes = {
            prefix: {method: {"requests": r, "bytes_sent": s, "bytes_received": b} for method, (r, s, b) in m.items()}
            for prefix, m in table.items()
        }
        return {"prefixes": prefixes, "gets": gets}


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts = []
        while size := int(handler.rfile.readline().split(b";", 1)[0], 16):
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)
    return handler.rfile.read(int(handler.headers.get("Content-Length", 0)))


def _proxy_handler(upstream: tuple[str, int], counts: Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect; answers Expect: 100-continue
        upstream_connection: http.client.HTTPConnection | None = None

        def _handle(self) -> None:
            if self.path == _CONTROL:
                self._reply_json(counts.take())
                return
            body = _read_body(self) if self.command in ("PUT", "POST") else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            response = self._upstream(self.command, self.path, body, headers)
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
            length = response.getheader("Content-Length")
            received = 0
            if no_body:
                self.end_headers()
                response.read()
            elif length is not None:
                self.end_headers()
                while block := response.read(_BLOCK):
                    self.wfile.write(block)
                    received += len(block)
            else:
                data = response.read()
                received = len(data)
                self.send_header("Content-Length", str(received))
                self.end_headers()
                self.wfile.write(data)
            if response.will_close:
                self._drop_connection()
            counts.add(self.path, self.command, len(body or b""), received)

        def _upstream(
            self, method: str, path: str, body: bytes | None, headers: dict[str, str]
        ) -> http.client.HTTPResponse:
            for attempt in (1, 2):  # a kept-alive upstream connection may have been closed meanwhile
                if self.upstream_connection is None:
                    self.upstream_connection = http.client.HTTPConnection(*upstream, timeout=300)
                try:
                    self.upstream_connection.request(method, path, body=body, headers=headers)
                    return self.upstream_connection.getresponse()
                except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                    self._drop_connection()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        def _drop_connection(self) -> None:
            if self.upstream_connection is not None:
                self.upstream_connection.close()
                self.upstream_connection = None

        def _reply_json(self, value: Any) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def _serve_proxy(upstream: str, ready: Any) -> None:
    """The proxy process: listen on 127.0.0.1, send the port through ``ready``, forward until terminated."""
    parts = urlsplit(upstream)
    assert parts.hostname is not None and parts.port is not None
    server = _Server(("127.0.0.1", 0), _proxy_handler((parts.hostname, parts.port), Counts()))
    ready.send(server.server_address[1])
    server.serve_forever(poll_interval=0.05)


class CountingProxy:
    """A counting reverse proxy in front of ``upstream`` (``http://host:port``), in a process of its own."""

    def __init__(self, upstream: str) -> None:
        context = multiprocessing.get_context("spawn")
        here, there = context.Pipe()
        self.process = context.Process(target=_serve_proxy, args=(upstream, there), daemon=True)
        self.process.start()
        if not here.poll(60):
            raise RuntimeError("the counting proxy did not start")
        self.url = f"http://127.0.0.1:{here.recv()}"

    def take(self) -> dict[str, Any]:
        """Requests and body bytes per key prefix and method, and GETs per key, since the last take."""
        connection = http.client.HTTPConnection(urlsplit(self.url).netloc, timeout=30)
        try:
            connection.request("GET", _CONTROL)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def close(self) -> None:
        """Stop the proxy process."""
        self.process.terminate()
        self.process.join(timeout=30)


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    """Point ``AWS_ENDPOINT_URL`` at a counting proxy in front of ``upstream`` for the block."""
    proxy = CountingProxy(upstream)
    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    try:
        yield proxy
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved
        proxy.close()


def traffic(counts: dict[str, Any], prefix: str) -> dict[str, Any]:
    """One key prefix's requests and bytes, in all and per method."""
    methods = counts["prefixes"].get(prefix, {})
    return {
        "requests": sum(m["requests"] for m in methods.values()),
        "bytes_received": sum(m["bytes_received"] for m in methods.values()),
        "bytes_sent": sum(m["bytes_sent"] for m in methods.values()),
        "by_method": methods,
    }


def file_kind(key: str) -> str:
    """What a product file holds, from its name."""
    name = key.upper()
    if name.endswith(".ZIP"):
        return "zip"  # a whole product (stored ZIP): GDAL reads its members by range
    if "SPECTRAL_IMAGE" in name:
        return "spectral_image"
    if "-QL_" in name:
        return "quality_layers"
    return "metadata" if name.endswith(".XML") else "other"


KIND_FIELDS = ("files", "stored_bytes", "files_read", "stored_bytes_of_files_read", "gets", "bytes_read")


def reads_by_kind(gets: dict[str, list[int]], archive: Path) -> dict[str, dict[str, int]]:
    """Per kind of product file: files and bytes in the archive, files read, GETs, bytes read."""
    kinds: dict[str, dict[str, int]] = {}
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        key = f"{BUCKET}/{PRODUCTS}/{path.relative_to(archive).as_posix()}"
        requests, received = gets.get(key, [0, 0])
        kind = kinds.setdefault(file_kind(key), dict.fromkeys(KIND_FIELDS, 0))
        kind["files"] += 1
        kind["stored_bytes"] += path.stat().st_size
        if requests:
            kind["files_read"] += 1
            kind["stored_bytes_of_files_read"] += path.stat().st_size
        kind["gets"] += requests
        kind["bytes_read"] += received
    return kinds


# --- the builds -------------------------------------------------------------------------------------


def bucket_items(items: Path, archive: Path, products: str, dest: Path) -> Path:
    """The STAC items of ``items`` with every asset href moved to the same place under ``products``."""

    def moved(href: str) -> str:
        if href.startswith("/vsizip/"):
            return "/vsizip//vsis3/" + moved(href.removeprefix("/vsizip/")).removeprefix("s3://")
        return products + "/" + Path(href).relative_to(archive).as_posix()

    collection = json.loads(items.read_text())
    for item in collection["features"]:
        for asset in item["assets"].values():
            asset["href"] = moved(asset["href"])
    dest.write_text(json.dumps(collection))
    return dest


@dataclass
class Build:
    """One build's wall and stage seconds, its workers' CPU and memory, and moto's and the proxy's CPU."""

    wall_s: float
    stages_s: dict[str, float]
    worker_cpu_s: float
    worker_peak_rss_mb: float
    main_cpu_s: float
    moto_cpu_s: float
    proxy_cpu_s: float
    machine_busy_cpu_s: float
    machine_steal_cpu_s: float
    load_before: dict[str, float]


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def timed_build(source: Path, out: str | Path, workers: int, rules: Rules, helpers: dict[str, int],
                wait_quiet: float) -> Build:  # fmt: skip
    """Build ``source`` into ``out`` (which must not hold a corpus); ``helpers`` are moto's and the proxy's pids."""
    load = wait_for_quiet(wait_quiet, 10.0) if wait_quiet > 0 else system_load()
    others = {name: psutil.Process(pid) for name, pid in helpers.items()}
    others_before = {name: _cpu(p) for name, p in others.items()}
    me = psutil.Process()
    main_before = _cpu(me)
    times: dict[str, float] = {}
    sampler = WorkerSampler()
    sampler.start()
    try:
        with stage_timer(times), machine_cpu() as account:
            started = time.perf_counter()
            build_corpus(BuildOptions(source=str(source), out=out, query=SceneQuery(), rules=rules, workers=workers))
            wall = time.perf_counter() - started
    finally:
        sampler.stop()
    skip = set(helpers.values())
    return Build(
        wall_s=wall,
        stages_s=times,
        worker_cpu_s=sum(s for pid, s in sampler.cpu_seconds.items() if pid not in skip),
        worker_peak_rss_mb=max((r for pid, r in sampler.peak_rss.items() if pid not in skip), default=0) / 2**20,
        main_cpu_s=_cpu(me) - main_before,
        moto_cpu_s=_cpu(others["moto"]) - others_before["moto"],
        proxy_cpu_s=_cpu(others["proxy"]) - others_before["proxy"],
        machine_busy_cpu_s=account.busy_s,
        machine_steal_cpu_s=account.steal_s,
        load_before=load,
    )


def other_cpu_s(build: Build) -> float:
    """CPU seconds that processes other than this run's (build, moto, proxy) used while the build ran."""
    return build.machine_busy_cpu_s - build.worker_cpu_s - build.main_cpu_s - build.moto_cpu_s - build.proxy_cpu_s


def moto_pid() -> int:
    """The pid of the moto server this process started."""
    for child in psutil.Process().children():
        if "moto.server" in " ".join(child.cmdline()):
            return child.pid
    raise RuntimeError("no moto server among this process's children")


def corpus_content(root: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The observations' key columns (by obs) and the whole patch array of the corpus at ``root``."""
    reader = CorpusReader(root)
    observations = reader.table("observations")[KEY].sort_values("obs").reset_index(drop=True)
    return observations, np.asarray(reader.patches[:])


def check_same(corpora: dict[str, str | Path]) -> int:
    """Raise unless every corpus holds the observations and patches of the first; their count."""
    (first, root), *others = corpora.items()
    want_obs, want_patches = corpus_content(root)
    for name, other in others:
        got_obs, got_patches = corpus_content(other)
        try:
            pd.testing.assert_frame_equal(got_obs, want_obs)
        except AssertionError as error:
            raise SystemExit(f"build {name} kept other observations than build {first}:\n{error}") from None
        if got_patches.shape != want_patches.shape or not np.array_equal(got_patches, want_patches):
            raise SystemExit(f"build {name}'s patches differ from build {first}'s ({got_patches.shape} against "
                             f"{want_patches.shape})")  # fmt: skip
        del got_patches
    return len(want_obs)


def folder_bytes(folder: Path) -> tuple[int, int]:
    """Files under ``folder`` and their total size in bytes."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)


# --- one run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the products, run builds A, B and C, check them, return the result row."""
    archive, generated_s = cached_products(args.cache, args.replicas, args.seed)
    items = archive.parent / "stac" / "items.json"
    rules = Rules(shard_size=args.shard_size)
    work = Path(tempfile.mkdtemp(prefix="build-object-store-", dir=args.cache))
    runs: dict[str, list[Build]] = {"A": [], "B": [], "C": []}
    counts: dict[str, dict[str, Any]] = {}
    try:
        with s3_server() as endpoint:
            create_bucket(BUCKET)
            products = upload(archive, f"s3://{BUCKET}/{PRODUCTS}")  # straight to moto: neither counted nor timed
            in_bucket = bucket_items(items, archive, products, work / "items-s3.json")
            sources = {"A": items, "B": in_bucket, "C": items}
            corpora: dict[str, str | Path] = {}
            with counting_proxy(endpoint) as proxy:
                helpers = {"moto": moto_pid(), "proxy": int(proxy.process.pid or 0)}
                warm_page_cache(archive)
                proxy.take()
                for repeat in range(args.repeats):  # A, B, C, A, B, C, ...: a burst of other jobs hits one repeat
                    for name in runs:
                        out = f"s3://{BUCKET}/{CORPUS}/{repeat}" if name == "C" else work / f"{name}-{repeat}"
                        corpora[f"{name}{repeat}"] = out
                        runs[name].append(timed_build(sources[name], out, args.workers, rules, helpers,
                                                      args.wait_quiet))  # fmt: skip
                        counts.setdefault(name, proxy.take())  # the first repeat's requests
                        proxy.take()
                observations = check_same(corpora)
                proxy.take()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return row(args, runs, counts, observations, archive, generated_s, endpoint)


def row(args: argparse.Namespace, runs: dict[str, list[Build]], counts: dict[str, dict[str, Any]], observations: int,
        archive: Path, generated_s: float, endpoint: str) -> dict[str, Any]:  # fmt: skip
    """The JSON line of one run: each build's fastest repeat, the first repeat's requests."""
    builds = {name: min(repeats, key=lambda build: build.wall_s) for name, repeats in runs.items()}
    a, b, c = builds["A"], builds["B"], builds["C"]
    product_files, product_bytes = folder_bytes(archive)
    read = traffic(counts["B"], PRODUCTS)
    written = traffic(counts["C"], CORPUS)
    shard_gets = [  # zarr v3 chunk (here: shard) keys
        v for k, v in counts["C"]["gets"].items() if k.startswith(f"{BUCKET}/{CORPUS}/") and f"/{PATCH_ARRAY}/c/" in k
    ]
    written["shard_files_read_back"] = {"gets": sum(g for g, _ in shard_gets), "bytes": sum(b for _, b in shard_gets)}
    return {
        "benchmark": "build_object_store",
        "command": shlex.join(["python", "bench/build_object_store.py", *sys.argv[1:]]),
        **machine(),
        "replicas": args.replicas,
        "workers": args.workers,
        "threads_per_worker": 1,
        "shard_size": args.shard_size,
        "products": {"files": product_files, "bytes": product_bytes, "generated_s": round(generated_s, 1)},
        "observations": observations,
        "repeats": args.repeats,
        "wall_s": {name: round(build.wall_s, 2) for name, build in builds.items()},
        "wall_s_repeats": {name: [round(build.wall_s, 2) for build in repeats] for name, repeats in runs.items()},
        "bucket_products_to_local": round(b.wall_s / a.wall_s, 3),
        "bucket_corpus_to_local": round(c.wall_s / a.wall_s, 3),
        "patches_per_s": {name: round(observations / build.wall_s, 2) for name, build in builds.items()},
        "products_read_from_bucket": {
            **read,
            "bytes_per_kept_patch": round(read["bytes_received"] / observations),
            "to_product_bytes": round(read["bytes_received"] / product_bytes, 4),
            "by_file_kind": reads_by_kind(counts["B"]["gets"], archive),
        },
        "corpus_written_to_bucket": written,
        "same_patches": True,
        "builds": {name: _rounded({**asdict(b), "other_cpu_s": other_cpu_s(b)}) for name, b in builds.items()},
        "other_prefixes": {name: sorted(set(c["prefixes"]) - {PRODUCTS, CORPUS}) for name, c in counts.items()},
        "server": f"moto {endpoint}, through a counting proxy (Python, its own process)",
        "object_store_versions": {name: package_version(name) for name in ("moto", "obstore", "boto3")},
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    read, written = result["products_read_from_bucket"], result["corpus_written_to_bucket"]
    wall, rate = result["wall_s"], result["patches_per_s"]
    return "\n".join([
        f"replicas {result['replicas']}, {result['observations']} kept patches, {result['workers']} workers; "
        f"products {result['products']['bytes'] / MB:.0f} MB in {result['products']['files']} files",
        f"A disk -> disk    {wall['A']:7.1f} s  {rate['A']:6.2f} patches/s",
        f"B bucket -> disk  {wall['B']:7.1f} s  {rate['B']:6.2f} patches/s  B/A {result['bucket_products_to_local']}",
        f"C disk -> bucket  {wall['C']:7.1f} s  {rate['C']:6.2f} patches/s  C/A {result['bucket_corpus_to_local']}",
        f"B read {read['bytes_received'] / MB:.1f} MB from the products in {read['requests']} requests: "
        f"{read['bytes_per_kept_patch'] / MB:.2f} MB per kept patch, {read['to_product_bytes']} of the products' bytes",
        f"C wrote {written['bytes_sent'] / MB:.1f} MB to the bucket in {written['requests']} requests, and read "
        f"{written['shard_files_read_back']['bytes'] / MB:.1f} MB of its shard files back",
    ])  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4, help="copies of the example's scenes (default: 4)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers, one thread each (default: 2)")
    parser.add_argument("--shard-size", type=int, default=Rules().shard_size)
    parser.add_argument("--repeats", type=int, default=1, help="builds of each kind, alternating; fastest kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where products and corpora go")
    parser.add_argument("--keep", action="store_true", help="keep the corpora built on disk (under --cache)")
    parser.add_argument(
        "--wait-quiet", type=float, default=30.0, help="seconds to wait for idle CPUs before each build (0: none)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON line is appended here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three builds, append the row to ``--out`` and print a summary."""
    args = _parser().parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
