#!/usr/bin/env bash
# The install steps of the spectral-corpus image: docker/Dockerfile runs this script, and
# tests/test_docker.py runs it outside Docker (dry, and for real without dependencies).
#
#   bash docker/install.sh [PROJECT_DIR]      # PROJECT_DIR: the repository (default: this script's parent)
#
# Environment:
#   PYTHON               interpreter to install into, a virtual environment's (default: python3)
#   INSTALL_TRAIN=1      also CPU-only torch, for `spectral-corpus train` (the pipeline never imports torch)
#   INSTALL_DRY_RUN=1    print each command (`+ cmd args`) instead of running it
#   INSTALL_PIP_OPTIONS  more options for the project's `pip install`, split on spaces: a lock file
#                        (`--constraint /src/constraints.txt`), or `--no-deps --no-build-isolation --no-index`
#                        to install the project alone, offline
#   TORCH_INDEX_URL      where torch comes from (default: PyTorch's CPU index, so no CUDA wheels come in)
#
# GDAL is not installed separately: rasterio's wheels bundle it (GTiff, COG, ENVI, JP2OpenJPEG: the
# formats DLR delivers); the checks at the end show which GDAL the image runs.
set -euo pipefail

#: torch as pyproject.toml pins it (extras train, bench, test); tests/test_docker.py checks they agree.
TORCH_VERSION=2.13.0
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
PYTHON="${PYTHON:-python3}"
INSTALL_TRAIN="${INSTALL_TRAIN:-0}"
INSTALL_DRY_RUN="${INSTALL_DRY_RUN:-0}"
read -r -a pip_options <<<"${INSTALL_PIP_OPTIONS:-}"
project="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

die() {
    echo "install.sh: $*" >&2
    exit 1
}

for flag in INSTALL_TRAIN INSTALL_DRY_RUN; do
    [[ "${!flag}" == 0 || "${!flag}" == 1 ]] || die "$flag must be 0 or 1, not '${!flag}'"
done
[[ -f "$project/pyproject.toml" ]] || die "$project is not the spectral-corpus repository (no pyproject.toml)"

# Run a command, or print it (shell-quoted, after '+ ') when INSTALL_DRY_RUN=1.
run() {
    if [[ "$INSTALL_DRY_RUN" == 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# The same, with the command's own output discarded (help texts): only its exit status counts.
check() {
    if [[ "$INSTALL_DRY_RUN" == 1 ]]; then
        run "$@"
    else
        "$@" >/dev/null
    fi
}

extras=""
if [[ "$INSTALL_TRAIN" == 1 ]]; then
    # First, from the CPU index alone: the project's torch==2.13.0 is then satisfied by 2.13.0+cpu, and
    # pip never fetches PyPI's CUDA build and its nvidia-* wheels.
    run "$PYTHON" -m pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
    extras="[train]"
fi
run "$PYTHON" -m pip install ${pip_options[@]+"${pip_options[@]}"} "$project$extras"

# Checks: consistent dependencies; the installed package (not a source tree) imports without torch;
# GDAL reads DLR's formats; the commands the image runs exist.
run "$PYTHON" -m pip check
run "$PYTHON" -I -c "
import sys, sysconfig
from pathlib import Path
import rasterio, distributed
import spectral_corpus, spectral_corpus.pipeline.cli, spectral_corpus.stages.inspect, spectral_corpus.stages.materialize
where = Path(spectral_corpus.__file__).resolve()
site = Path(sysconfig.get_path('purelib')).resolve()
assert where.is_relative_to(site), f'spectral_corpus imported from {where}, not from {site}'
assert 'torch' not in sys.modules, 'the pipeline imported torch'
with rasterio.Env() as env:
    missing = {'GTiff', 'COG', 'ENVI', 'JP2OpenJPEG'} - set(env.drivers())
assert not missing, f'GDAL lacks the drivers {sorted(missing)}'
from importlib.metadata import version
print('install.sh: spectral-corpus', version('spectral-corpus'), 'rasterio', rasterio.__version__,
      'GDAL', rasterio.__gdal_version__, 'distributed', distributed.__version__)
"
if [[ "$INSTALL_TRAIN" == 1 ]]; then
    run "$PYTHON" -I -c "
import torch
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__
assert torch.version.cuda is None, f'a CUDA build of torch came in ({torch.version.cuda})'
print('install.sh: torch', torch.__version__)
"
fi
# The console scripts land in the interpreter's scripts folder (/opt/venv/bin in the image).
if [[ "$INSTALL_DRY_RUN" == 1 ]]; then
    # shellcheck disable=SC2016  # printed as they stand, not expanded
    scripts='$SCRIPTS' search='$SCRIPTS:$PATH'
else
    scripts="$("$PYTHON" -I -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    search="$scripts:$PATH"
fi
check "$scripts/spectral-corpus" --help
check env PATH="$search" dask scheduler --help
check env PATH="$search" dask worker --help
echo "install.sh: done"
