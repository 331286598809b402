"""Compose the stages on Dask: catalog -> inspect -> plan -> materialize -> commit.

Progress lives in ``CORPUS/_build``: the scene table, one file per inspected scene and one marker
per written shard (the plan is cheap and deterministic, so it is recomputed). A build that is killed
and run again skips what is done and ends with the same corpus; ``_build`` is removed once the
version is published.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client, LocalCluster, as_completed
from tqdm import tqdm

from catalog.bands import band_table, selected_bands
from catalog.query import SceneQuery
from catalog.scenes import OK, REJECTED, read_scene_table, records_from_table, scene_table, write_scene_table
from catalog.sources import find_scenes
from stages.commit import VersionTables, commit_version, read_current
from stages.inspect import CANDIDATE_COLUMNS, InspectResult, inspect_scene
from stages.materialize import ShardResult, materialize_shard, shard_marker
from stages.plan import Plan, plan_corpus
from stages.rules import FLAGS, Rules
from stages.stats import merge_all, shard_moments
from stages.store import CorpusPaths, create_patch_array, write_json_atomic, write_obs_coordinates

PATCH_PIXELS = 128 * 128


class BuildError(RuntimeError):
    """The build cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build depends on."""

    source: str
    out: Path
    query: SceneQuery
    rules: Rules
    workers: int = 2
    scheduler: str | None = None
    progress: bool = True


def build_corpus(options: BuildOptions) -> dict[str, Any]:
    """Build a corpus from scratch (or finish an interrupted build); return the version manifest."""
    paths = CorpusPaths(options.out)
    published = read_current(paths)
    if published is not None:
        raise BuildError(f"{options.out} already holds a corpus (version {published}); extend it instead")
    paths.build.mkdir(parents=True, exist_ok=True)
    _check_same_build(paths, options)
    scenes = _catalog(paths, options)
    usable = int((scenes["status"] == OK).sum())
    _say(options.progress, f"catalog     {len(scenes)} scenes found, {usable} usable")
    with dask_client(options.workers, options.scheduler) as client:
        inspected = _inspect(client, paths, scenes, options.progress)
        plan = _plan(paths, scenes, inspected, options.rules)
        _say(
            options.progress,
            f"plan        {len(plan.candidates)} candidate patches -> {len(plan.observations)} observations at "
            f"{len(plan.locations)} locations",
        )
        bands = selected_bands(options.rules.bands)
        table = band_table().set_index("band").loc[bands]
        create_patch_array(
            paths.zarr,
            len(plan.observations),
            table["center_nm"].to_numpy(),
            table["fwhm_nm"].to_numpy(),
            bands,
            options.rules.shard_size,
        )
        shards = _materialize(client, paths, scenes, plan, bands, options.progress)
        stats = band_statistics(client, paths.root, plan.observations, len(bands), options.progress)
    manifest = _commit(paths, options, scenes, inspected, plan, shards, stats)
    shutil.rmtree(paths.build)
    _say(options.progress, f"commit      version {manifest['version']} published")
    return manifest


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


@contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Client]:
    """A client of an existing scheduler, or of a local cluster of single-threaded worker processes."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _check_same_build(paths: CorpusPaths, options: BuildOptions) -> None:
    """Refuse to resume a build that was started with other options."""
    identity = {"source": options.source, "query": options.query.as_dict(), "rules": options.rules.as_dict()}
    identity = json.loads(json.dumps(identity, default=str))
    marker = paths.build / "options.json"
    if marker.exists():
        started = json.loads(marker.read_text())
        if started != identity:
            raise BuildError(
                f"{paths.build} holds an interrupted build with other options ({started}); "
                "re-run it with the same options, or remove that directory to start over"
            )
        return
    write_json_atomic(marker, identity)


def _catalog(paths: CorpusPaths, options: BuildOptions) -> pd.DataFrame:
    """The scene table of this build: queried once, then reused by a resumed build."""
    path = paths.build / "scenes.parquet"
    if not path.exists():
        records = find_scenes(options.source, options.query)
        table = scene_table(records, {"source": options.source, **options.query.as_dict()})
        write_scene_table(table, path)
    return read_scene_table(path)


def _inspect(client: Client, paths: CorpusPaths, scenes: pd.DataFrame, progress: bool) -> list[InspectResult]:
    """Inspect every usable scene once; results are kept per scene so a re-run skips them."""
    folder = paths.build / "inspect"
    folder.mkdir(exist_ok=True)
    records = [r for r in records_from_table(scenes) if r.status == OK]
    todo = [r for r in records if not _inspect_file(folder, r.product).exists()]
    tasks = [(f"inspect-{r.product}", inspect_task, (r, str(folder))) for r in todo]
    _run(client, tasks, "inspect", progress)
    return [_load_inspect(_inspect_file(folder, r.product)) for r in records]


def inspect_task(record: Any, folder: str) -> str:
    """Dask task: inspect one scene and save the result beside the other scenes'."""
    result = inspect_scene(record)
    payload = {**asdict(result), "candidates": result.candidates.to_dict(orient="list")}
    write_json_atomic(_inspect_file(Path(folder), record.product), payload)
    return result.status


def _inspect_file(folder: Path, product: str) -> Path:
    return folder / f"{product}.json"


def _load_inspect(path: Path) -> InspectResult:
    payload = json.loads(path.read_text())
    candidates = pd.DataFrame(payload.pop("candidates"), columns=CANDIDATE_COLUMNS)
    numeric = [c for c in CANDIDATE_COLUMNS if c != "product"]
    candidates[numeric] = candidates[numeric].astype("int64")
    return InspectResult(candidates=candidates, **payload)


def _plan(paths: CorpusPaths, scenes: pd.DataFrame, inspected: list[InspectResult], rules: Rules) -> Plan:
    """Plan the corpus from all inspected scenes (pure and deterministic, so a re-run plans the same)."""
    frames = [r.candidates for r in inspected if r.status == OK and len(r.candidates)]
    candidates = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CANDIDATE_COLUMNS)
    return plan_corpus(candidates, scenes, rules)


def _materialize(
    client: Client, paths: CorpusPaths, scenes: pd.DataFrame, plan: Plan, bands: np.ndarray, progress: bool
) -> pd.DataFrame:
    """Write every shard that has no marker yet; return the table of all shards."""
    hrefs = {p: json.loads(a).get("image") for p, a in zip(scenes["product"], scenes["assets"], strict=True)}
    observations = plan.observations.assign(href=plan.observations["product"].map(hrefs))
    for leftover in paths.zarr.rglob("*.partial"):
        leftover.unlink()  # a write killed midway; the shard is rewritten below
    groups = dict(tuple(observations.groupby("shard")))
    todo = [int(s) for s in groups if not shard_marker(paths, int(s)).exists()]
    tasks = [
        (f"materialize-{s}", materialize_shard, (paths.root, s, groups[s][["obs", "href", "row", "col"]], bands))
        for s in todo
    ]
    _run(client, tasks, "materialize", progress)
    results = [ShardResult(**json.loads(shard_marker(paths, int(s)).read_text())) for s in sorted(groups)]
    return pd.DataFrame([asdict(r) for r in results], columns=[f for f in ShardResult.__dataclass_fields__])


def band_statistics(
    client: Client, corpus: Path, observations: pd.DataFrame, n_bands: int, progress: bool
) -> dict[str, Any]:
    """Per-band mean and std (DN) over the training split: one task per shard, pooled on the client."""
    train = observations[observations["split"] == "train"]
    tasks = [
        (f"stats-{shard}", shard_moments, (corpus, group["obs"].tolist(), n_bands))
        for shard, group in train.groupby("shard")
    ]
    total = merge_all(_run(client, tasks, "stats", progress), n_bands)
    return {
        "split": "train",
        "units": "DN (reflectance x 10000)",
        "count": total.count.tolist(),
        "mean": total.mean.tolist(),
        "std": total.std.tolist(),
    }


def _run(
    client: Client, tasks: Iterable[tuple[str, Callable[..., Any], tuple[Any, ...]]], desc: str, progress: bool
) -> list[Any]:
    """Run tasks on the cluster with a progress bar; return results in task order, or raise the first error."""
    futures = [client.submit(fn, *args, key=key, pure=False) for key, fn, args in tasks]
    with tqdm(total=len(futures), desc=f"{desc:<11}", unit="task", disable=not progress) as bar:
        for future in as_completed(futures):
            future.result()
            bar.update()
    return [future.result() for future in futures]


def _commit(
    paths: CorpusPaths,
    options: BuildOptions,
    scenes: pd.DataFrame,
    inspected: list[InspectResult],
    plan: Plan,
    shards: pd.DataFrame,
    stats: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the version's tables and publish them."""
    scenes = _scene_outcomes(scenes, inspected, plan)
    observations = _observation_table(plan.observations, scenes)
    write_obs_coordinates(
        paths.zarr,
        {
            "time": observations["acquired"].astype("datetime64[s, UTC]").astype("int64").to_numpy(),
            "location_id": observations["location_id"].to_numpy(),
            "scene_id": observations["scene_id"].to_numpy(),
            "epsg": observations["epsg"].to_numpy(dtype=np.int32),
            "x": observations["x"].to_numpy(),
            "y": observations["y"].to_numpy(),
        },
        {
            "time": {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"},
            "x": {"long_name": "patch centre easting in the patch's UTM zone", "units": "m"},
            "y": {"long_name": "patch centre northing in the patch's UTM zone", "units": "m"},
        },
    )
    metadata = {
        "software_version": package_version("spectral-corpus"),
        "source": options.source,
        "query": options.query.as_dict(),
        "rules": options.rules.as_dict(),
        "bands": band_table()
        .set_index("band")
        .loc[selected_bands(options.rules.bands)]
        .reset_index()
        .to_dict(orient="list"),
    }
    tables = VersionTables(scenes, plan.locations, observations, plan.candidates, shards)
    return commit_version(paths, 1, tables, json.loads(json.dumps(metadata, default=str)), stats)


def _scene_outcomes(scenes: pd.DataFrame, inspected: list[InspectResult], plan: Plan) -> pd.DataFrame:
    """The scene table with inspect rejections, stable scene ids and per-scene counts."""
    scenes = scenes.sort_values("product").reset_index(drop=True)
    rejected = {r.product: r.reason for r in inspected if r.status == REJECTED}
    epsg = {r.product: r.epsg for r in inspected if r.epsg is not None}
    scenes["status"] = [
        REJECTED if p in rejected else s for p, s in zip(scenes["product"], scenes["status"], strict=True)
    ]
    scenes["reason"] = [rejected.get(p, r) for p, r in zip(scenes["product"], scenes["reason"], strict=True)]
    scenes["epsg"] = scenes["product"].map(epsg).astype("Int64").fillna(scenes["epsg"])
    scenes.insert(0, "scene_id", np.arange(len(scenes), dtype=np.int64))
    scenes["n_candidates"] = scenes["product"].map(plan.candidates["product"].value_counts()).fillna(0).astype(int)
    scenes["n_observations"] = scenes["product"].map(plan.observations["product"].value_counts()).fillna(0).astype(int)
    return scenes


def _observation_table(observations: pd.DataFrame, scenes: pd.DataFrame) -> pd.DataFrame:
    """Public observation columns: ids, placement, time, pixel window and flag fractions."""
    table = observations.merge(scenes[["product", "scene_id"]], on="product", how="left")
    fractions = {f"frac_{flag}": (table[f"n_{flag}"] / PATCH_PIXELS).astype("float32") for flag in FLAGS}
    table = table.assign(**fractions)
    columns = [
        "obs",
        "shard",
        "slot",
        "location_id",
        "split",
        "scene_id",
        "product",
        "acquired",
        "epsg",
        "ix",
        "iy",
        "row",
        "col",
        "x",
        "y",
        *fractions,
    ]
    return table[columns].sort_values("obs").reset_index(drop=True)
