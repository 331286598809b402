"""The packages are installed under one namespace: a user's own ``training`` or ``pipeline`` is never ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import spectral_corpus
from spectral_corpus.training import config


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in ``cwd`` (a user's project), capturing its output."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_users_own_packages_are_theirs(tmp_path: Path) -> None:
    for name in ("training", "pipeline"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    done = run_python(
        "import training, pipeline, spectral_corpus.training.config as ours\n"
        "print(training.OWNER, '|', pipeline.OWNER, '|', ours.__name__)",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "user training | user pipeline | spectral_corpus.training.config"


def test_no_generic_top_level_names_are_installed(tmp_path: Path) -> None:
    for name in ("catalog", "stages", "pipeline", "training"):
        done = run_python(f"import {name}", tmp_path)
        assert f"No module named '{name}'" in done.stderr


def test_the_subpackages_live_in_the_repository_folders() -> None:
    root = Path(spectral_corpus.__file__).resolve().parent.parent
    assert Path(config.__file__).resolve() == root / "training" / "config.py"


def test_package_data_is_found_from_any_folder(tmp_path: Path) -> None:
    done = run_python(
        "from importlib.resources import files\n"
        "from spectral_corpus.catalog.bands import band_table\n"
        "data = files('spectral_corpus.catalog') / 'data'\n"
        "print(len(band_table()), (data / 'berlin_urban_spectral_library.csv').is_file())",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["224", "True"]
