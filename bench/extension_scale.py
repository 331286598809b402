"""A nightly extension at SpectralEarth size: what adding 1 % new scenes costs, against planning the whole.

Run from the repository root::

    python bench/extension_scale.py [--quick] [--out bench/results/extension_scale.jsonl]
    #   --scenes 11636 --new-share 0.01 --seed 0 --cache DIR --wait-quiet 30

One generated world (``spectralearth_scale.synthetic_world``: 11,636 scenes, about a million candidate cells,
datatakes astride UTM zone edges, revisits) is split by acquisition time: the newest ``--new-share`` of its
scenes arrive in the extension, the older ones make the corpus. In one fresh spawned process, for each of
two sizes (``--scenes`` and a tenth of it):

1. the corpus of the older scenes is built by the client's steps of a build
   (``spectralearth_scale.client_steps``: every task's output is written beforehand as the task writes
   it, so no pixel is made); its steps are timed too, as the baseline;
2. the extension: the same client steps over that corpus, given only the new scenes (what an incremental
   STAC query returns), timed step by step. The newest datatakes are taken whole (DLR processes a
   datatake's tiles together). Its plan is ``pipeline.build._plan``, which reads the corpus's tables and
   calls ``stages.plan.extend_plan``: only the cells the new scenes touch, and the cells of other zones
   that overlap them, are decided again. Shards whose training patches the extension changes
   (observations retired by a new scene's overlap) have their moments computed again by a stats task on
   a worker; here, without pixels, made-up moments answer those tasks and their count is recorded;
3. on the same inputs, in the same process, the tables already read: *a fresh plan of the whole*
   (``plan_corpus`` over every candidate, no corpus: what a rebuild plans), *the whole re-planned* as
   extensions did before (``plan_corpus`` over every candidate with the corpus's locations and placed
   observations) and ``extend_plan`` itself. The
   extension's plan must equal the latter (candidates' fates, observations, locations), else the run fails.

Figures: CPU s of each, the ratios extension plan / fresh plan and extension client / build client, and
the client's peak RSS (``VmHWM``) at both sizes. One JSON line per run is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from build_throughput import DEFAULT_CACHE, machine
from machine_load import system_load, wait_for_quiet
from spectralearth_scale import (
    RULES,
    SPECTRALEARTH,
    Steps,
    append_row,
    client_steps,
    git_commit,
    in_fresh_process,
    measured,
    reset_peak_rss,
    synthetic_world,
)

import spectral_corpus.pipeline.build as build_module
from spectral_corpus.catalog.bands import selected_bands
from spectral_corpus.catalog.scenes import SceneRecord
from spectral_corpus.pipeline import tables as pipeline_tables
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.grid import PATCH_PX
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS
from spectral_corpus.stages.plan import KEY, Plan, extend_plan, plan_corpus
from spectral_corpus.stages.stats import Moments


def extension_at_scale(n_scenes: int, new_share: float, seed: int, root: Path) -> dict[str, Any]:
    """Run in a fresh process: build the older scenes, extend by the newest ``new_share``, compare plans."""
    reset_peak_rss()
    world = synthetic_world(n_scenes, seed)
    older, newer = newest_datatakes(world.records, new_share)
    build, extension = Steps(), Steps()
    _, base_manifest, _ = client_steps(older, world.candidates, root, build)
    base = CorpusReader(root)
    n_bands = len(selected_bands(RULES.bands))
    stand_in = {"stats": lambda files, observations, n: generated_moments(observations, n_bands)}
    plan, manifest, setup = client_steps(newer, world.candidates, root, extension, base, stand_in)
    scenes = pipeline_tables.ok_scenes(CorpusReader(root).table("scenes"))
    candidates = world.candidates[world.candidates["product"].isin(scenes["product"])][CANDIDATE_COLUMNS]
    fresh, fresh_cost = measured(plan_corpus, candidates, scenes, RULES)
    layout = {
        "known_locations": base.table("locations"),
        "placed": base.table("observations"),
        "first_obs": build_module._first_shard(base) * RULES.shard_size,
    }
    whole, whole_cost = measured(lambda: plan_corpus(candidates, scenes, RULES, **layout))
    _check_same(plan, whole)
    new_candidates = world.candidates["product"].isin({r.product for r in newer})
    previous, new = base.table("candidates"), world.candidates[new_candidates][CANDIDATE_COLUMNS]
    _, extend_cost = measured(lambda: extend_plan(previous, new, scenes, RULES, **layout))
    return {
        "scenes": len(world.records),
        "new_scenes": len(newer),
        "shards_whose_moments_are_recomputed": len(setup["stood_in_for"]),
        "shards": manifest.n_shards,
        "candidates": len(candidates),
        "new_candidates": int(new_candidates.sum()),
        "observations_before": base_manifest.n_obs,
        "observations_after": manifest.n_obs,
        "new_observations": manifest.n_obs - base_manifest.n_obs,
        "fresh_plan_observations": len(fresh.observations),
        "build_steps": build.steps,
        "extension_steps": extension.steps,
        "extension_functions": extension.functions,
        "fresh_plan": fresh_cost,
        "whole_replanned": whole_cost,
        "extend_plan": extend_cost,
        "ratios": _ratios(build.steps, extension.steps, fresh_cost, whole_cost, extend_cost),
        "client_peak_rss_mb": max(v["rss_start_mb"] + v["peak_above_start_mb"] for v in extension.steps.values()),
    }


def newest_datatakes(records: list[SceneRecord], share: float) -> tuple[list[SceneRecord], list[SceneRecord]]:
    """The records of the older datatakes, and of the newest ones that hold ``share`` of the scenes (whole
    datatakes: DLR processes a datatake's tiles together)."""
    started = {}
    for record in records:
        started[record.datatake] = min(record.acquired, started.get(record.datatake, record.acquired))
    newest = sorted(started, key=started.__getitem__, reverse=True)
    wanted, taken, new = max(1, round(len(records) * share)), 0, set()
    per_datatake = pd.Series([r.datatake for r in records]).value_counts()
    for datatake in newest:
        if taken >= wanted:
            break
        new.add(datatake)
        taken += int(per_datatake[datatake])
    return [r for r in records if r.datatake not in new], [r for r in records if r.datatake in new]


def generated_moments(observations: list[int], n_bands: int) -> Moments:
    """What a stats task returns for a shard whose training patches changed (no pixels here: made up)."""
    rng = np.random.default_rng(len(observations))
    count = np.full(n_bands, len(observations) * PATCH_PX**2, dtype=np.int64)
    return Moments(count, rng.uniform(100, 4000, n_bands), rng.uniform(1e9, 1e11, n_bands))


def _check_same(extended: Plan, whole: Plan) -> None:
    """The extension's plan equals the whole re-planned with the corpus's layout, or the run fails."""
    fate = ["product", *KEY, "drop_reason"]
    columns = ["obs", "product", *KEY, "location_id", "split", "shard", "slot"]
    same = (
        extended.candidates[fate].reset_index(drop=True).equals(whole.candidates[fate].reset_index(drop=True))
        and extended.observations[columns].equals(whole.observations[columns])
        and extended.locations.drop(columns="geometry").equals(whole.locations.drop(columns="geometry"))
    )
    if not same:
        raise AssertionError("the extension's plan differs from the whole re-planned: extend_plan is wrong")


def _ratios(
    build: dict[str, dict[str, float]],
    extension: dict[str, dict[str, float]],
    fresh: dict[str, float],
    whole: dict[str, float],
    extend: dict[str, float],
) -> dict[str, float]:
    """CPU-second ratios: the extension's plan (with and without reading the corpus's tables) against the two
    whole plans; its client steps against a build's."""
    plan = extension["plan (build._plan)"]["cpu_s"]
    return {
        "extension_plan_step_over_fresh_plan": plan / fresh["cpu_s"],
        "extend_plan_over_fresh_plan": extend["cpu_s"] / fresh["cpu_s"],
        "extend_plan_over_whole_replanned": extend["cpu_s"] / whole["cpu_s"],
        "extension_client_over_build_client": sum(s["cpu_s"] for s in extension.values())
        / sum(s["cpu_s"] for s in build.values()),
    }


def report(row: dict[str, Any]) -> str:
    """The figures as text, one size a block."""
    lines = []
    for name in ("tenth", "full"):
        run = row[name]
        lines.append(
            f"{name}: {run['scenes']} scenes, {run['candidates']} candidates; {run['new_scenes']} new scenes, "
            f"{run['new_candidates']} new candidates, {run['new_observations']} new observations "
            f"({run['observations_before']} -> {run['observations_after']})"
        )
        lines.append(f"  fresh plan of the whole       {run['fresh_plan']['cpu_s']:7.2f} CPU s")
        lines.append(f"  the whole re-planned (before) {run['whole_replanned']['cpu_s']:7.2f} CPU s")
        lines.append(f"  extend_plan on the same input {run['extend_plan']['cpu_s']:7.2f} CPU s")
        for step, cost in run["extension_steps"].items():
            built = run["build_steps"].get(step, {}).get("cpu_s", float("nan"))
            lines.append(f"  extension {step:45s} {cost['cpu_s']:7.2f} CPU s (build: {built:.2f})")
        lines.append(f"  ratios {json.dumps(run['ratios'])}; client peak RSS {run['client_peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both sizes, check the plans, append the row to ``--out`` and print the figures."""
    args = _parser().parse_args(argv)
    scenes = args.scenes or round(SPECTRALEARTH["scenes"] / (10 if args.quick else 1))
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    row: dict[str, Any] = {
        **machine(),
        "commit": git_commit(),
        "command": " ".join(["python", *(sys.argv if argv is None else [__file__, *argv])]),
        "new_share": args.new_share,
        "quick": args.quick,
    }
    for name, size in (("tenth", max(10, round(scenes / 10))), ("full", scenes)):
        root = Path(tempfile.mkdtemp(prefix=f"extension-{name}-", dir=args.cache)) / "corpus"
        try:
            wait_for_quiet(args.wait_quiet, 10.0)
            row[f"load_before_{name}"] = system_load()
            row[name] = in_fresh_process(extension_at_scale, size, args.new_share, args.seed, root)
        finally:
            shutil.rmtree(root.parent, ignore_errors=True)
    row["seconds"] = time.perf_counter() - started
    print(report(append_row(args.out, row)))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, help=f"scenes in the world (default: {SPECTRALEARTH['scenes']})")
    parser.add_argument("--new-share", type=float, default=0.01, help="share of scenes the extension adds (0.01)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tenth of the size: a smoke check, not to quote")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the corpora are made")
    parser.add_argument("--wait-quiet", type=float, default=30.0, help="seconds to wait for idle CPUs before each")
    parser.add_argument("--out", type=Path, default=Path("bench/results/extension_scale.jsonl"))
    return parser


if __name__ == "__main__":
    sys.exit(main())
