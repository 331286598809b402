"""Compose the stages on Dask: catalog -> inspect -> plan -> materialize -> stats -> commit.

A build is an extension of an empty corpus. An extension looks only at products the corpus does not
know yet, re-plans globally (so it gives what a fresh build over all scenes would), keeps every
existing observation where it is, writes new shards only, from the next shard boundary, and
publishes version N+1 in one atomic step. One writer at a time (``pipeline.lock``).

Progress lives in ``CORPUS/_build``: the scene table, one file per inspected scene and one marker
per written shard (the plan is cheap and deterministic, so it is recomputed). A run that is killed
and started again skips what is done and ends with the same corpus; ``_build`` is removed once the
version is published.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client, LocalCluster, as_completed

from spectral_corpus.catalog.archive import archive_products, index_products
from spectral_corpus.catalog.bands import band_table, selected_bands
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import OK, SceneRecord, records_from_table, scene_table
from spectral_corpus.catalog.sources import archive_root, is_stac_api, read_source
from spectral_corpus.corpus_files import CorpusFiles, LocalFiles, corpus_files
from spectral_corpus.corpus_format import (
    BUILD,
    FORMAT_NAME,
    FORMAT_VERSION,
    ZARR,
    BandStatistics,
    CorpusMetadata,
    Manifest,
    read_manifest,
)
from spectral_corpus.errors import SpectralCorpusError
from spectral_corpus.pipeline import tables
from spectral_corpus.pipeline.errors import BuildError, NothingBuiltError
from spectral_corpus.pipeline.lock import Lease, writer_lock
from spectral_corpus.pipeline.outcomes import DryRun, Published, RunResult, Unchanged
from spectral_corpus.pipeline.progress import Progress, log
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.work import Inspections, ReadFailures, WorkState, save_inspection
from spectral_corpus.stages.commit import VersionTables, commit_version, read_current
from spectral_corpus.stages.failpoints import failpoint
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS, InspectResult, inspect_scene
from spectral_corpus.stages.materialize import (
    SHARD_MARKERS,
    SceneReadError,
    ShardResult,
    materialize_shard,
    shard_marker,
)
from spectral_corpus.stages.plan import Plan, extend_plan, plan_corpus
from spectral_corpus.stages.rules import Rules
from spectral_corpus.stages.splits import assign_splits
from spectral_corpus.stages.stats import Moments, merge_all, moments_key, shard_moments
from spectral_corpus.stages.store import create_patch_array, write_obs_coordinates


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build or an extension depends on."""

    source: str
    #: The corpus: a local folder or an object-store URL (``s3://bucket/prefix``).
    out: str | Path
    query: SceneQuery
    rules: Rules
    workers: int = 2
    scheduler: str | None = None
    #: Told how many tasks of each stage are done (``pipeline.progress``); stage lines go to logging.
    progress: Progress | None = None


def build_corpus(options: BuildOptions) -> Published:
    """Build a corpus from scratch (or finish an interrupted build)."""
    with writer_lock(options.out) as lease:
        files = corpus_files(options.out)
        published = read_current(files)
        _drop_published_work(files, published)
        if published is not None:
            raise BuildError(f"{options.out} already holds a corpus (version {published}); extend it instead")
        result = _update(options, None, WorkState(files), lease)
        assert isinstance(result, Published)  # a first version is never unchanged
        return result


def extend_corpus(options: BuildOptions, dry_run: bool = False, incremental: bool = True) -> RunResult:
    """Add the source's new products to a corpus with the corpus's own rules; publish version N+1.

    With ``dry_run`` nothing is written to the corpus: the result says what would be added. A STAC API
    that an earlier version read with the same query is asked only for the scenes changed since
    (``incremental``; see ``changed_since_last_run``).
    """
    CorpusReader(options.out)  # is it a corpus? (before the lock, which would create the directory)
    with writer_lock(options.out) as lease:
        base = CorpusReader(options.out)
        _refuse_inverted_quality(base)
        _drop_published_work(base.files, base.version)
        options = replace(options, rules=Rules.from_dict(base.rules))
        if incremental:
            options = replace(options, query=changed_since_last_run(base, options.source, options.query))
        if not dry_run:
            return _update(options, base, WorkState(base.files), lease)
        with tempfile.TemporaryDirectory(prefix="spectral-corpus-dry-run-") as work:
            return _update(options, base, WorkState(LocalFiles(Path(work))), lease, dry_run=True)


def _nothing_built(scenes: pd.DataFrame, candidates: pd.DataFrame | None) -> str:
    """Why no observation came of ``scenes``: rejections by reason, then dropped patches by rule."""
    from spectral_corpus.pipeline.info import rejection_label

    rejected = scenes[scenes["status"] != OK]
    lines = [f"no observations: {len(rejected)} of {len(scenes)} scenes were rejected"]
    groups = rejected["rejection"].map(rejection_label).value_counts()
    lines += [f"  {count} {group}" for group, count in groups.items()]
    candidates = candidates[candidates["product"].isin(scenes["product"])] if candidates is not None else None
    if candidates is not None and len(candidates):
        lines.append(f"and all {len(candidates)} candidate patches of the others were dropped:")
        lines += [f"  {count} by {reason}" for reason, count in candidates["drop_reason"].value_counts().items()]
    lines += [f"    {product}: {reason}" for product, reason in rejected[["product", "reason"]].itertuples(index=False)]
    return "\n".join(lines)


def _give_up(work: WorkState, base: CorpusReader | None, message: str) -> None:
    """Stop a run that would publish nothing new; a build leaves no work state behind."""
    if base is None:
        work.remove()
    raise NothingBuiltError(message)


def _refuse_inverted_quality(base: CorpusReader) -> None:
    """A corpus selected with the old ``--min-quality`` kept the worse scenes: say so instead of extending it."""
    old = base.metadata.query.get("min_quality")
    if old is not None:
        raise BuildError(
            f"{base.files.root} was built with --min-quality {old:g}, which kept scenes with enmap:overallQuality "
            f">= {old:g}: the worse ones (0 is nominal, 1 reduced, 2 low). That option is now --max-quality; "
            "rebuild the corpus with --max-quality to select by quality the right way round"
        )


def _update(
    options: BuildOptions, base: CorpusReader | None, work: WorkState, lease: Lease, dry_run: bool = False
) -> RunResult:
    files = corpus_files(options.out)
    version = (base.version if base else 0) + 1
    with dask_client(options.workers, options.scheduler) as client:
        scenes = _scenes(client, work, options, base, version)
        known = set(base.table("scenes")["product"]) if base else set()
        new = [r for r in records_from_table(tables.ok_scenes(scenes)) if r.product not in known]
        fresh = scenes[~scenes["product"].isin(known)]
        if len(fresh) and not new and not dry_run:
            _give_up(work, base, _nothing_built(fresh, None))
        since = options.query.updated_since
        changed = f", {len(fresh)} changed since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""
        log.info(f"catalog     {len(scenes)} scenes ({len(new)} new to inspect{changed})")
        inspected = _inspect(client, work, new, options.progress)
        scenes = tables.apply_inspection(scenes, inspected)
        while True:  # until every new shard is written; a scene that cannot be read is rejected, then re-plan
            scenes = tables.reject(scenes, work.read_failures())
            plan = _plan(base, scenes, inspected, options.rules)
            added = plan.observations[plan.observations["shard"] >= _first_shard(base)]
            if len(fresh) and added.empty and not dry_run:
                fresh = scenes[scenes["product"].isin(fresh["product"])]
                _give_up(work, base, _nothing_built(fresh, plan.candidates))
            log.info(f"plan        {len(added)} new observations, {len(plan.observations)} in all")
            if dry_run:
                return _preview(base, scenes, plan, added, version)
            if base is not None and added.empty and len(plan.observations) == base.manifest.n_obs:
                work.remove()
                log.info(f"unchanged   nothing new; version {base.version} stays current")
                return Unchanged(base.version)
            _prepare_array(files, plan, base, options.rules)
            shards, written, failures = _materialize(client, files, scenes, added, options.rules, options.progress)
            if not failures:
                break
            work.record_read_failures(_products_of(scenes, failures))
        if base is not None:
            shards = (
                pd.concat([base.table("shards"), shards], ignore_index=True) if len(shards) else base.table("shards")
            )
        n_bands = len(selected_bands(options.rules.bands))
        moments = _moments(client, files, plan.observations, base, n_bands, options.progress, written)
    failpoint("before-commit")
    lease.confirm()
    manifest = _commit(files, options, base, version, scenes, plan, shards, moments)
    failpoint("published")
    work.remove()
    log.info(f"commit      version {manifest.version} published")
    return Published(manifest)


def _scenes(
    client: Client, work: WorkState, options: BuildOptions, base: CorpusReader | None, version: int
) -> pd.DataFrame:
    """The next version's scene table; a source that fails or finds nothing leaves no work state."""
    fresh = work.identity() is None
    try:
        work.claim(_identity(options, version))
        found = _catalog(client, work, options)
        if found.empty and (base is None or options.query.updated_since is None):  # else: nothing changed
            raise BuildError(f"{options.source} has no scenes matching the query {options.query.as_dict()}")
    except BaseException:
        if fresh:
            work.remove()
        raise
    return tables.merge_scenes(base.table("scenes") if base else None, found)


def _prepare_array(files: CorpusFiles, plan: Plan, base: CorpusReader | None, rules: Rules) -> None:
    """Create the patch array, or grow it to hold the planned observations."""
    bands = selected_bands(rules.bands)
    table = band_table().set_index("band").loc[bands]
    n_rows = max(int(plan.observations["obs"].max()) + 1 if len(plan.observations) else 0, _rows(base))
    create_patch_array(
        files, n_rows, table["center_nm"].to_numpy(), table["fwhm_nm"].to_numpy(), bands, rules.shard_size
    )


def _image_hrefs(scenes: pd.DataFrame) -> dict[str, str | None]:
    """Each scene's spectral image: product -> href."""
    return {p: dict(a).get("image") for p, a in zip(scenes["product"], scenes["assets"], strict=True)}


def _products_of(scenes: pd.DataFrame, failures: dict[str, tuple[Rejection, str]]) -> ReadFailures:
    """Unreadable images (href -> code, reason) as the products they belong to."""
    product_of = {href: product for product, href in _image_hrefs(scenes).items()}
    return {product_of[href]: failure for href, failure in failures.items()}


@contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Client]:
    """A client of an existing scheduler, or of a local cluster of single-threaded worker processes."""
    # distributed's own log lines (a lost connection, its retries) are not the user's: _run says what happened
    for name in ("distributed", "distributed.client"):  # the client's level is set apart in dask's config
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if scheduler:
        try:
            client = Client(scheduler)
        except OSError as error:
            raise BuildError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # its HTTP server binds anyway: a free port, never a clash
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _drop_published_work(files: CorpusFiles, published: int | None) -> None:
    """Remove the work state of a run that was killed after it published its version (nothing is left to do)."""
    work = WorkState(files)
    identity = work.identity()
    if published is not None and identity is not None and identity["version"] <= published:
        work.remove()


def _identity(options: BuildOptions, version: int) -> dict[str, Any]:
    """What a resumed run must share with the run that started the work state."""
    return {
        "format_version": FORMAT_VERSION,  # a run started by software writing another format is not resumed
        "version": version,
        "source": options.source,
        "query": options.query.as_dict(),
        "rules": options.rules.as_dict(),
    }


def _catalog(client: Client, work: WorkState, options: BuildOptions) -> pd.DataFrame:
    """The source's scene table: queried once, then reused by a resumed run."""
    found = work.scenes()
    if found is None:
        root = archive_root(options.source)
        if root is None:
            records = read_source(options.source, options.query)
        else:
            records = _index_archive(client, root, options.query, options.progress)
        work.record_scenes(scene_table(records, {"source": options.source, **options.query.as_dict()}))
        found = work.scenes()
        assert found is not None
    return found


#: Products per indexing task: reading a product's METADATA.XML head takes milliseconds.
INDEX_BATCH = 64


def _index_archive(client: Client, root: Path, query: SceneQuery, progress: Progress | None) -> list[SceneRecord]:
    """The records of a local archive, its products read in batches on the cluster; the client only walks
    the folders."""
    products = archive_products(root)
    batches = [products[i : i + INDEX_BATCH] for i in range(0, len(products), INDEX_BATCH)]
    tasks = [(f"index-{n}", index_products, (batch, root, query)) for n, batch in enumerate(batches)]
    return [record for records in run_tasks(client, tasks, "index", progress) for record in records]


def _inspect(client: Client, work: WorkState, records: list[Any], progress: Progress | None) -> list[InspectResult]:
    """Inspect each scene once; results are kept per scene so a re-run skips them."""
    done = work.inspected()
    todo = [r for r in records if r.product not in done]
    tasks = [(f"inspect-{r.product}", inspect_task, (r, work.files, work.inspection_key(r.product))) for r in todo]
    run_tasks(client, tasks, "inspect", progress)
    return work.inspections([r.product for r in records])


def inspect_task(record: Any, files: CorpusFiles, key: str) -> str:
    """Dask task: inspect one scene and record the result beside the other scenes'."""
    result = inspect_scene(record)
    failpoint("inspected")
    save_inspection(result, files, key)
    return result.status


def _plan(base: CorpusReader | None, scenes: pd.DataFrame, inspected: list[InspectResult], rules: Rules) -> Plan:
    """Plan a build over the new scenes' candidates; an extension decides again only the cells they touch."""
    in_use = tables.ok_scenes(scenes)
    candidates = _candidates_in_use(inspected, set(in_use["product"]))
    if base is None:
        return plan_corpus(candidates, in_use, rules)
    return extend_plan(
        base.table("candidates"),
        candidates,
        in_use,
        rules,
        known_locations=base.table("locations"),
        placed=base.table("observations"),
        first_obs=_first_shard(base) * rules.shard_size,
    )


def _candidates_in_use(inspected: list[InspectResult], products: set[str]) -> pd.DataFrame:
    """The candidates of the inspected scenes among ``products``, in order, as one table. Inspections gathered
    into one table (``work.Inspections``) give that table, or its rows of those scenes: no copy of it."""
    if isinstance(inspected, Inspections):
        used = [r.product in products for r in inspected]
        keep = np.repeat(used, [len(r.candidates) for r in inspected])
        if keep.any():
            table = inspected.candidates
            return table if keep.all() else table[keep].reset_index(drop=True)
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    frames = [r.candidates for r in inspected if r.product in products and len(r.candidates)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CANDIDATE_COLUMNS)


def _first_shard(base: CorpusReader | None) -> int:
    """New observations start at the shard after the last one written (old shards are never rewritten)."""
    if base is None:
        return 0
    shards = base.table("shards")
    return int(shards["shard"].max()) + 1 if len(shards) else 0


def _rows(base: CorpusReader | None) -> int:
    return 0 if base is None else int(base.patches.shape[0])


def _preview(base: CorpusReader | None, scenes: pd.DataFrame, plan: Plan, added: pd.DataFrame, version: int) -> DryRun:
    """What an extension would add, without writing anything."""
    old = base.table("observations") if base else pd.DataFrame(columns=["obs", "location_id"])
    known_ids = set(base.table("locations")["location_id"]) if base else set()
    rejected = scenes[scenes["status"] != OK]
    return DryRun(
        version=version,
        new_scenes=sorted(set(added["product"])),
        rejected_scenes=dict(zip(rejected["product"], rejected["reason"], strict=True)),
        new_observations=len(added),
        new_locations=int((~plan.locations["location_id"].isin(known_ids)).sum()),
        retired_observations=int((~old["obs"].isin(plan.observations["obs"])).sum()),
        observations_after=len(plan.observations),
    )


def _materialize(
    client: Client,
    files: CorpusFiles,
    scenes: pd.DataFrame,
    added: pd.DataFrame,
    rules: Rules,
    progress: Progress | None,
) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, tuple[Rejection, str]]]:
    """Write every new shard that has no marker yet: the new shards' table, the band moments their tasks
    took of the training patches (from the markers, read once), and the unreadable images."""
    observations = added.assign(href=added["product"].map(_image_hrefs(scenes)), train=added["split"] == "train")
    if isinstance(files, LocalFiles):
        for leftover in (files.path / ZARR).rglob("*.partial"):
            leftover.unlink()  # a write killed midway (zarr's temporary file); the shard is rewritten below
    groups = dict(tuple(observations.groupby("shard")))
    bands = selected_bands(rules.bands)
    written = _written_shards(files)
    todo = [int(s) for s in groups if int(s) not in written]
    tasks = [
        (f"materialize-{s}", materialize_task, (files, s, groups[s][["obs", "href", "row", "col", "train"]], bands))
        for s in todo
    ]
    done = run_tasks(client, tasks, "materialize", progress)
    failures = {r["href"]: (Rejection(r["rejection"]), r["reason"]) for r in done if r is not None}
    if failures:
        return pd.DataFrame(), [], failures
    markers = [_marker(files, int(s)) for s in sorted(groups)]
    table = pd.DataFrame(
        [asdict(ShardResult(**fields)) for fields, _ in markers], columns=list(ShardResult.__dataclass_fields__)
    )
    return table, [moments for _, moments in markers], {}


def _written_shards(files: CorpusFiles) -> set[int]:
    """The shards whose marker is in the work state (one listing)."""
    return {int(key.rsplit("/", 1)[-1].removesuffix(".json")) for key in files.list(f"{BUILD}/{SHARD_MARKERS}")}


def _marker(files: CorpusFiles, shard: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A written shard's marker: its ShardResult fields, and the band moments of its training patches."""
    marker = json.loads(files.read(shard_marker(shard)))
    moments = marker.pop("moments")
    return marker, moments


def materialize_task(files: CorpusFiles, shard: int, rows: pd.DataFrame, bands: np.ndarray) -> dict[str, str] | None:
    """Dask task: write one shard; an unreadable image is reported (href, reason), not raised."""
    try:
        materialize_shard(files, shard, rows, bands)
    except SceneReadError as error:
        return {"href": error.href, "rejection": str(error.code), "reason": str(error)}
    return None


def _moments(
    client: Client,
    files: CorpusFiles,
    observations: pd.DataFrame,
    base: CorpusReader | None,
    n_bands: int,
    progress: Progress | None,
    written: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Per-shard band moments of the training split; shards whose training patches did not change reuse
    the previous version's moments, and those just ``written`` the moments their tasks took; the others
    are computed, one task per shard."""
    train = observations.loc[observations["split"] == "train", ["shard", "obs"]].sort_values("obs")
    groups = {int(s): obs for s, obs in train.groupby("shard")["obs"].agg(list).items()}
    keys = pd.Series({s: moments_key(obs) for s, obs in groups.items()}, dtype=object)
    parts = [base.table("moments")] if base is not None else []
    if written:  # computed from the patches while they were written: no second read
        parts.append(pd.DataFrame(written))
    columns = ["key", "count", "mean", "m2"]
    known = (
        pd.concat([p[columns] for p in parts]).drop_duplicates("key", keep="last").set_index("key") if parts else None
    )
    todo = keys.index[~keys.isin(known.index)] if known is not None else keys.index
    tasks = [(f"stats-{s}", shard_moments, (files, groups[s], n_bands)) for s in todo]
    done = run_tasks(client, tasks, "stats", progress)
    fresh = pd.DataFrame(
        [{"key": keys[s], "count": m.count, "mean": m.mean, "m2": m.m2} for s, m in zip(todo, done, strict=True)],
        columns=columns,
    ).set_index("key")
    known = fresh if known is None else pd.concat([known, fresh])
    rows = pd.DataFrame({"shard": keys.index.astype("int64"), "key": keys.to_numpy()})
    return rows.join(known[["count", "mean", "m2"]], on="key").reset_index(drop=True)


def band_statistics(moments: pd.DataFrame, n_bands: int) -> BandStatistics:
    """Pool per-shard moments into the per-band mean and std (DN) of the training split."""
    parts = [
        Moments(np.asarray(c, np.int64), np.asarray(m), np.asarray(q))
        for c, m, q in zip(moments["count"], moments["mean"], moments["m2"], strict=True)
    ]
    total = merge_all(parts, n_bands)
    return BandStatistics(
        split="train",
        units="DN (reflectance x 10000)",
        count=total.count.tolist(),
        mean=total.mean.tolist(),
        std=total.std.tolist(),
    )


def run_tasks(
    client: Client,
    tasks: Iterable[tuple[str, Callable[..., Any], tuple[Any, ...]]],
    stage: str,
    progress: Progress | None,
) -> list[Any]:
    """Run tasks on the cluster, telling ``progress``; return results in task order, or raise the first error.

    A task's SpectralCorpusError (a source refusing our credentials, say) is raised as it is; any other
    error is wrapped in a BuildError naming the task. Task keys name what they do and end with a token
    of this call, so that runs sharing a scheduler never take each other's results.
    """
    token = uuid.uuid4().hex[:8]
    futures = [client.submit(fn, *args, key=f"{key}-{token}", pure=False) for key, fn, args in tasks]
    tell = progress or (lambda stage, done, total: None)
    tell(stage, 0, len(futures))
    for done, future in enumerate(as_completed(futures), start=1):
        if future.status == "cancelled":  # by the client, when it lost the scheduler for good
            raise BuildError(
                f"the Dask scheduler at {client.scheduler.address} went away while {stage} tasks ran; the work "
                "done so far is kept: run the same command again once the scheduler is back"
            )
        if future.status == "error":
            error = future.exception()
            if isinstance(error, SpectralCorpusError):  # already says what went wrong, and where
                raise error
            raise BuildError(f"task {future.key}: {type(error).__name__}: {error}") from error
        tell(stage, done, len(futures))
    return [future.result() for future in futures]


def _commit(
    files: CorpusFiles,
    options: BuildOptions,
    base: CorpusReader | None,
    version: int,
    scenes: pd.DataFrame,
    plan: Plan,
    shards: pd.DataFrame,
    moments: pd.DataFrame,
) -> Manifest:
    """Assemble the version's tables, write the observation coordinates and publish."""
    scenes = tables.count_per_scene(scenes, plan)
    observations = tables.observation_table(plan.observations, scenes)
    write_coordinates(files, observations)
    base_retired = base.table("retired") if base else None
    retired = tables.retired_table(base.table("observations") if base else None, plan, scenes, version, base_retired)
    version_tables = VersionTables(
        scenes=scenes,
        locations=tables.location_table(plan, base.table("locations") if base else None),
        observations=observations,
        candidates=plan.candidates,
        shards=shards,
        moments=moments,
        retired=retired,
    )
    metadata = base.metadata if base else _corpus_metadata(options)
    run = {"source": options.source, **_query_record(options.query, scenes, options.source)}
    run["software_version"] = _software_version()
    stats = band_statistics(moments, len(selected_bands(options.rules.bands)))
    return commit_version(files, version, version_tables, metadata, stats, _as_json(run))


def changed_since_last_run(base: CorpusReader, source: str, query: SceneQuery) -> SceneQuery:
    """``query`` limited to scenes changed since the last version that read ``source`` with it, when the
    source is a STAC API whose items say when they changed (``updated``); else ``query`` as it is.

    The high-water mark is the newest ``updated`` among that version's scenes from the source: a scene
    changed later has a later ``updated``. One the corpus already knows is skipped as ever.
    """
    if not is_stac_api(source) or query.updated_since is not None:
        return query
    asked = _as_json(query.as_dict())
    for version in range(base.version, 0, -1):
        run = read_manifest(base.files, version).run
        if run.get("source") == source:
            mark = run.get("updated_until") if run.get("query") == asked else None
            return replace(query, updated_since=datetime.fromisoformat(mark)) if mark else query
    return query


def _query_record(query: SceneQuery, scenes: pd.DataFrame, source: str) -> dict[str, Any]:
    """What a manifest keeps of the query: the query as asked, what it was limited to, its high-water mark."""
    updated = scenes.loc[scenes["source"] == source, "updated"].max()
    return {
        "query": _as_json(replace(query, updated_since=None).as_dict()),
        "updated_since": query.updated_since.isoformat() if query.updated_since else None,
        "updated_until": None if pd.isna(updated) else updated.isoformat(),
    }


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_coordinates(files: CorpusFiles, observations: pd.DataFrame) -> None:
    """Write the observations' coordinate arrays beside the patches (``corpus_format.OBS_COORDINATES``)."""
    centre = "patch centre {} in the patch's UTM zone (EPSG code in `epsg`)"
    write_obs_coordinates(
        files,
        observations["obs"].to_numpy(),
        {
            "time": observations["acquired"].astype("datetime64[s, UTC]").astype("int64").to_numpy(),
            "location_id": observations["location_id"].to_numpy(),
            "scene_id": observations["scene_id"].to_numpy(),
            "epsg": observations["epsg"].to_numpy(dtype=np.int32),
            "centre_x": observations["x"].to_numpy(),
            "centre_y": observations["y"].to_numpy(),
        },
        {
            "time": {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"},
            "centre_x": {"long_name": centre.format("easting"), "units": "m"},
            "centre_y": {"long_name": centre.format("northing"), "units": "m"},
        },
    )


def _corpus_metadata(options: BuildOptions) -> CorpusMetadata:
    """What ``corpus.json`` records once, at the first build: rules, bands, first source."""
    bands = band_table().set_index("band").loc[selected_bands(options.rules.bands)].reset_index()
    return CorpusMetadata(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        software_version=_software_version(),
        source=options.source,
        query=_as_json(options.query.as_dict()),
        rules=options.rules.as_dict(),
        bands=bands.to_dict(orient="list"),
    )


def _software_version() -> str:
    return package_version("spectral-corpus")


def resplit_corpus(options: BuildOptions, **split: Any) -> Published | Unchanged:
    """Re-draw the splits with other settings and recompute the statistics; publish version N+1.

    ``split`` holds ``split_block_cells``, ``val_fraction``, ``test_fraction`` or ``split_seed``; the
    new settings become the corpus's rules. Shards and observations stay as they are.
    """
    CorpusReader(options.out)
    with writer_lock(options.out) as lease:
        base = CorpusReader(options.out)
        rules = replace(Rules.from_dict(base.rules), **split)
        if rules == Rules.from_dict(base.rules):  # splits are a pure function of the rules
            return Unchanged(base.version)
        locations = base.table("locations")
        locations["split"] = assign_splits(
            locations, rules.split_block_cells, rules.val_fraction, rules.test_fraction, rules.split_seed
        )
        observations = base.table("observations")
        observations["split"] = observations["location_id"].map(locations.set_index("location_id")["split"])
        with dask_client(options.workers, options.scheduler) as client:
            moments = _moments(
                client, base.files, observations, base, len(selected_bands(rules.bands)), options.progress
            )
        version_tables = VersionTables(
            scenes=base.table("scenes"),
            locations=locations,
            observations=observations,
            candidates=base.table("candidates"),
            shards=base.table("shards"),
            moments=moments,
            retired=base.table("retired"),
        )
        metadata = replace(base.metadata, rules=rules.as_dict())
        stats = band_statistics(moments, len(selected_bands(rules.bands)))
        run: dict[str, object] = {"command": "resplit", "split": split, "software_version": _software_version()}
        lease.confirm()
        return Published(commit_version(base.files, base.version + 1, version_tables, metadata, stats, run))
