"""The ``spectral-corpus`` command line: parse arguments, set up logging, call one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rasters import RASTER_FORMATS
from spectral_corpus.corpus_files import is_object_store
from spectral_corpus.errors import SpectralCorpusError
from spectral_corpus.pipeline.errors import UsageError
from spectral_corpus.pipeline.outcomes import DryRun, Unchanged
from spectral_corpus.pipeline.progress import TaskBars
from spectral_corpus.stages.rules import Rules
from spectral_corpus.training.train_cli import add_train_parser

if TYPE_CHECKING:
    from spectral_corpus.corpus_format import Manifest
    from spectral_corpus.pipeline.build import BuildOptions

log = logging.getLogger("spectral_corpus")
MIN_QUALITY_GONE = (
    "--min-quality was replaced by --max-quality: enmap:overallQuality is 0 nominal, 1 reduced, 2 low, so lower "
    "is better and --min-quality {q:g} kept the worse scenes; use --max-quality (0 keeps nominal scenes only)"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; return the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    quiet = getattr(args, "quiet", False)
    args.progress = None if quiet else TaskBars()
    try:
        with _stage_lines(not quiet):
            return int(args.run(args))
    except SpectralCorpusError as error:
        if args.progress is not None:
            args.progress.close()  # the error goes on a line of its own, after the bar it stopped
        print(f"spectral-corpus {args.command}: error: {error}", file=sys.stderr)
        return 2


@contextmanager
def _stage_lines(show: bool) -> Iterator[None]:
    """While a command runs, show the pipeline's stage lines (its INFO log) on stderr as plain lines."""
    if not show:
        yield
        return
    pipeline_log = logging.getLogger("spectral_corpus.pipeline")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = pipeline_log.level, pipeline_log.propagate
    pipeline_log.addHandler(handler)
    pipeline_log.setLevel(logging.INFO)
    pipeline_log.propagate = False  # else the root handler prints them a second time
    try:
        yield
    finally:
        pipeline_log.removeHandler(handler)
        pipeline_log.setLevel(level)
        pipeline_log.propagate = propagate


def corpus_root(text: str) -> str | Path:
    """A corpus argument: an object-store URL stays a string, anything else is a local path."""
    return text if is_object_store(text) else Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral-corpus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate example products, build a corpus from them, print it")
    demo.add_argument("directory", nargs="?", type=Path, default=Path("spectral-corpus-demo"))
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(run=_demo)

    synth = commands.add_parser("synth", help="write realistic example EnMAP L2A products and STAC items")
    synth.add_argument("outdir", type=Path)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--replicas", type=int, default=1, help="copies of the scenario, shifted north")
    synth.add_argument("--with-bad", action="store_true", help="also write broken products the build must reject")
    synth.add_argument(
        "--raster-format",
        choices=RASTER_FORMATS,
        help="write every scene's rasters in this DLR delivery format (default: GeoTIFF strips, one scene as a COG)",
    )
    synth.set_defaults(run=_synth)

    build = commands.add_parser("build", help="build a corpus from a STAC API, a static STAC file or an archive")
    build.add_argument("--source", required=True, help="STAC API URL, static STAC JSON file, or product directory")
    build.add_argument("--out", required=True, type=corpus_root)
    _add_query_options(build)
    _add_rule_options(build)
    build.add_argument("--workers", type=int, default=2, help="local Dask worker processes (default 2)")
    build.add_argument("--scheduler", help="address of an existing Dask scheduler (instead of a local cluster)")
    build.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    build.set_defaults(run=_build)

    extend = commands.add_parser("extend", help="add new acquisitions to a corpus and publish a new version")
    extend.add_argument("--corpus", required=True, type=corpus_root)
    extend.add_argument("--source", required=True, help="STAC API URL, static STAC JSON file, or product directory")
    _add_query_options(extend)
    extend.add_argument("--dry-run", action="store_true", help="print what would be added; write nothing")
    extend.add_argument(
        "--full",
        action="store_true",
        help="ask a STAC API for every scene, not only those changed since the corpus last read it",
    )
    extend.add_argument("--workers", type=int, default=2)
    extend.add_argument("--scheduler")
    extend.add_argument("--quiet", action="store_true")
    extend.set_defaults(run=_extend)

    versions = commands.add_parser("versions", help="list a corpus's published versions")
    versions.add_argument("corpus", type=corpus_root, help="a corpus folder or object-store URL (s3://bucket/prefix)")
    versions.add_argument("--json", action="store_true")
    versions.set_defaults(run=_versions)

    resplit = commands.add_parser("resplit", help="re-draw the splits, recompute the statistics, publish a version")
    resplit.add_argument("corpus", type=corpus_root)
    resplit.add_argument("--split-block-cells", type=int)
    resplit.add_argument("--val-fraction", type=float)
    resplit.add_argument("--test-fraction", type=float)
    resplit.add_argument("--split-seed", type=int)
    resplit.add_argument("--workers", type=int, default=2)
    resplit.add_argument("--scheduler")
    resplit.add_argument("--quiet", action="store_true")
    resplit.set_defaults(run=_resplit)

    add_train_parser(commands)

    info = commands.add_parser("info", help="summarise a corpus")
    info.add_argument("corpus", type=corpus_root, help="a corpus folder or object-store URL (s3://bucket/prefix)")
    info.add_argument("--version", type=int, help="a published version (default: current)")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_info)

    report = commands.add_parser("report", help="write a self-contained HTML page of figures about a corpus")
    report.add_argument("corpus", type=corpus_root, help="a corpus folder or object-store URL (s3://bucket/prefix)")
    report.add_argument("--out", required=True, type=Path, help="folder to write index.html into")
    report.add_argument("--version", type=int, help="a published version (default: current)")
    report.set_defaults(run=_report)

    verify = commands.add_parser("verify", help="recompute shard checksums and cross-check tables and store")
    verify.add_argument("corpus", type=corpus_root, help="a corpus folder or object-store URL (s3://bucket/prefix)")
    verify.add_argument("--version", type=int)
    verify.set_defaults(run=_verify)

    export = commands.add_parser("export-spectralearth", help="write the published SpectralEarth GeoTIFF layout")
    export.add_argument("corpus", type=corpus_root, help="a corpus folder or object-store URL (s3://bucket/prefix)")
    export.add_argument("dest", type=Path)
    export.add_argument("--version", type=int)
    export.add_argument("--split", choices=("train", "val", "test"), help="export this split only (default: all)")
    export.add_argument(
        "--compress",
        choices=("none", "deflate", "zstd"),
        default="none",
        help="lossless compression of the GeoTIFFs (default none, as the published files)",
    )
    export.add_argument(
        "--tiled", action=argparse.BooleanOptionalAction, default=False, help="write tiles instead of strips"
    )
    export.add_argument("--tile-size", type=int, default=128, help="tile edge in pixels with --tiled (default 128)")
    export.set_defaults(run=_export)

    importer = commands.add_parser(
        "import-spectralearth", help="read a SpectralEarth GeoTIFF tree (published or exported) into a new corpus"
    )
    importer.add_argument("source", type=Path, help="the dataset folder holding enmap/<location>/<scene>.tif")
    importer.add_argument("--out", required=True, type=corpus_root)
    importer.add_argument(
        "--index", type=Path, help="index table (Parquet or CSV; default SOURCE/index.parquet when present)"
    )
    _add_layout_options(importer, "for locations the source gives no split: side of the blocks of cells that share one")
    importer.add_argument("--workers", type=int, default=2, help="local Dask worker processes (default 2)")
    importer.add_argument("--scheduler", help="address of an existing Dask scheduler (instead of a local cluster)")
    importer.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    importer.set_defaults(run=_import_spectralearth)
    return parser


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", default="ENMAP_HSI_L2A")
    area = parser.add_mutually_exclusive_group()
    area.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"))
    area.add_argument("--aoi", type=Path, help="GeoJSON / GeoPackage area of interest")
    parser.add_argument("--start", help="first acquisition date (YYYY-MM-DD or ISO time, UTC)")
    parser.add_argument("--end", help="last acquisition date, inclusive")
    parser.add_argument("--max-scene-cloud", type=float, metavar="PCT", help="maximum scene cloud cover, %%")
    parser.add_argument(
        "--max-quality",
        type=float,
        metavar="Q",
        help="keep scenes whose enmap:overallQuality is at most Q (0 nominal, 1 reduced, 2 low)",
    )
    parser.add_argument("--min-quality", type=float, help=argparse.SUPPRESS)  # refused with an explanation


def _add_rule_options(parser: argparse.ArgumentParser) -> None:
    defaults = Rules()
    parser.add_argument("--bands", type=int, choices=(202, 224), default=defaults.bands)
    for flag in ("nodata", "cloud", "cloudshadow", "snow"):
        default = getattr(defaults, f"max_{flag}") * 100
        parser.add_argument(
            f"--max-{flag}",
            type=float,
            default=default,
            metavar="PCT",
            help=f"drop a patch whose {flag} pixels exceed PCT %% (default {default:g})",
        )
    parser.add_argument(
        "--zone-overlap",
        type=float,
        default=defaults.zone_overlap * 100,
        metavar="PCT",
        help="cells of two UTM zones overlapping more than PCT %% are one place (default 1)",
    )
    _add_layout_options(parser, "side of the square blocks of cells that share a split")


#: The rules of shards and splits that ``build`` and ``import-spectralearth`` take as options.
LAYOUT_OPTIONS = ("shard_size", "split_block_cells", "val_fraction", "test_fraction", "split_seed")


def _add_layout_options(parser: argparse.ArgumentParser, blocks: str) -> None:
    """Shards and splits: ``--shard-size``, ``--split-block-cells`` (``blocks`` says what it is for here),
    ``--val-fraction``, ``--test-fraction``, ``--split-seed``."""
    defaults = Rules()
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="observations per shard")
    parser.add_argument(
        "--split-block-cells",
        type=int,
        default=defaults.split_block_cells,
        help=f"{blocks} (default {defaults.split_block_cells})",
    )
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed)


def _query(args: argparse.Namespace) -> SceneQuery:
    if args.min_quality is not None:
        raise UsageError(MIN_QUALITY_GONE.format(q=args.min_quality))
    return SceneQuery.from_options(
        collection=args.collection,
        bbox=args.bbox,
        aoi_path=args.aoi,
        start=args.start,
        end=args.end,
        max_cloud=args.max_scene_cloud,
        max_quality=args.max_quality,
    )


def _rules(args: argparse.Namespace) -> Rules:
    return Rules(
        max_nodata=args.max_nodata / 100,
        max_cloud=args.max_cloud / 100,
        max_cloudshadow=args.max_cloudshadow / 100,
        max_snow=args.max_snow / 100,
        zone_overlap=args.zone_overlap / 100,
        bands=args.bands,
        **_layout(args),
    )


def _layout(args: argparse.Namespace) -> dict[str, Any]:
    """The rules that ``_add_layout_options`` adds, as given."""
    return {name: getattr(args, name) for name in LAYOUT_OPTIONS}


def _source_options(args: argparse.Namespace, out: str | Path, rules: Rules) -> BuildOptions:
    """What ``build`` and ``extend`` read (source, query, cluster, progress) and where they publish."""
    from spectral_corpus.pipeline.build import BuildOptions

    return BuildOptions(
        source=args.source,
        out=out,
        query=_query(args),
        rules=rules,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=args.progress,
    )


def _published(corpus: str | Path, manifest: Manifest) -> str:
    """One line on a newly published version."""
    return (
        f"published {corpus} version {manifest.version}: {manifest.n_obs} observations at "
        f"{manifest.n_locations} locations in {manifest.n_shards} shards"
    )


def _build(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.build import build_corpus

    print(_published(args.out, build_corpus(_source_options(args, args.out, _rules(args))).manifest))
    return 0


def _extend(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.build import extend_corpus

    options = _source_options(args, args.corpus, Rules())  # the rules are replaced by the corpus's own
    result = extend_corpus(options, dry_run=args.dry_run, incremental=not args.full)
    if isinstance(result, DryRun):
        print(json.dumps({"dry_run": True, **asdict(result)}, indent=2))
    elif isinstance(result, Unchanged):
        print(f"{args.corpus}: nothing new in {args.source}; version {result.version} stays current")
    else:
        print(f"{_published(args.corpus, result.manifest)} ({result.manifest.n_retired} retired)")
    return 0


def _resplit(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.build import BuildOptions, resplit_corpus

    options = BuildOptions(
        source="",
        out=args.corpus,
        query=SceneQuery(),
        rules=Rules(),
        workers=args.workers,
        scheduler=args.scheduler,
        progress=args.progress,
    )
    names = ("split_block_cells", "val_fraction", "test_fraction", "split_seed")
    changes = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    result = resplit_corpus(options, **changes)
    if isinstance(result, Unchanged):
        print(f"{args.corpus}: splits unchanged; version {result.version} stays current")
    else:
        print(f"published {args.corpus} version {result.version} with new splits and statistics")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.reader import list_versions

    rows = list_versions(args.corpus)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'version':>7}  {'created':<25} {'observations':>12} {'locations':>9} {'shards':>6} {'retired':>7}  source")
    for row in rows:
        mark = "*" if row["current"] else " "
        print(
            f"{row['version']:>6}{mark}  {row['created']:<25} {row['observations']:>12} {row['locations']:>9} "
            f"{row['shards']:>6} {row['retired']:>7}  {row['source']}"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.info import corpus_summary, format_summary
    from spectral_corpus.pipeline.reader import CorpusReader

    summary = corpus_summary(CorpusReader(args.corpus, args.version))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _report(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.reader import CorpusReader
    from spectral_corpus.pipeline.report import write_report

    page = write_report(CorpusReader(args.corpus, args.version), args.out)
    print(f"wrote {page}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.reader import CorpusReader
    from spectral_corpus.pipeline.verify import verify_corpus

    reader = CorpusReader(args.corpus, args.version)
    problems = verify_corpus(reader)
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"{args.corpus} version {reader.version}: {reader.manifest.n_shards} shards and "
        f"{reader.manifest.n_obs} observations verified"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.export import GeoTiffOptions, export_spectralearth
    from spectral_corpus.pipeline.reader import CorpusReader
    from spectral_corpus.pipeline.spectralearth_layout import INDEX_FILE, SENSOR_DIR

    options = GeoTiffOptions(compress=args.compress, tiled=args.tiled, tile_size=args.tile_size)
    reader = CorpusReader(args.corpus, args.version)
    count = export_spectralearth(reader, args.dest, progress=args.progress, split=args.split, options=options)
    print(f"wrote {count} patches to {args.dest / SENSOR_DIR} and their index to {args.dest / INDEX_FILE}")
    return 0


def _import_spectralearth(args: argparse.Namespace) -> int:
    from spectral_corpus.pipeline.spectralearth_import import ImportOptions, import_spectralearth

    rules = Rules(**_layout(args))
    options = ImportOptions(
        source=args.source,
        out=args.out,
        index=args.index,
        rules=rules,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=args.progress,
    )
    print(_published(args.out, import_spectralearth(options).manifest))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from spectral_corpus.catalog.synth import SCENARIO, write_bad_products, write_example

    formats = {plan.label: args.raster_format for plan in SCENARIO} if args.raster_format else None
    example = write_example(args.outdir, seed=args.seed, replicas=args.replicas, raster_formats=formats)
    if args.with_bad:
        write_bad_products(example.archive, seed=args.seed)
    print(f"wrote {len(example.products)} products to {example.archive} and STAC items to {example.stac_items}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from spectral_corpus.catalog.synth import write_example
    from spectral_corpus.corpus_format import CorpusLayout
    from spectral_corpus.pipeline.build import BuildOptions, build_corpus
    from spectral_corpus.pipeline.info import corpus_summary, format_summary
    from spectral_corpus.pipeline.reader import CorpusReader

    products, corpus = args.directory / "products", args.directory / "corpus"
    if CorpusLayout(corpus).current.exists():
        print(f"{corpus} already built; showing it (remove {args.directory} to start again)")
    else:
        example = write_example(products)
        print(f"wrote {len(example.products)} example products to {example.archive}")
        build_corpus(
            BuildOptions(
                source=str(example.archive),
                out=corpus,
                query=SceneQuery(),
                rules=Rules(),
                workers=args.workers,
                progress=args.progress,
            )
        )
    print(format_summary(corpus_summary(CorpusReader(corpus))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
