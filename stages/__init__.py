"""The build stages: pure functions from an input table to an output table.

``inspect`` (per scene) -> ``plan`` (global) -> ``materialize`` (per shard) -> ``commit``.
"""
