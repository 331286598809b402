#!/usr/bin/env bash
# Install what `python -m bench` compares the corpus with, without replacing the CPU torch.
#
#   bash bench/install.sh
#
# 1. The `bench` extra (pyproject.toml): torch==2.13.0, webdataset, and the runtime dependencies of
#    LitData and MosaicML Streaming for local files, pinned.
# 2. litdata and mosaicml-streaming with --no-deps: both require torchvision, which pip resolves to a CUDA
#    torch (2.14.1 plus the nvidia-* wheels, several GB) in place of torch 2.13.0+cpu; mosaicml-streaming
#    also pins numpy<2.2 and pulls the Azure, GCS, OCI and SFTP SDKs. The benchmark loads only
#    `streaming.base` (bench/formats.py), which needs neither torchvision nor the SDKs, and runs with the
#    project's numpy.
# 3. A check that torch is still the version it was and that the three libraries import.
#
# Afterwards `pip check` reports litdata's and mosaicml-streaming's unmet declared requirements (torchvision,
# the cloud SDKs, numpy<2.2): use an environment of its own for the benchmarks, not the one that runs the
# tests (tests/test_docker.py runs docker/install.sh, which ends with `pip check`).
set -euo pipefail
cd "$(dirname "$0")/.."

before=$(python -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
python -m pip install -e ".[bench]"
python -m pip install --no-deps "litdata==0.2.76" "mosaicml-streaming==0.13.0"
after=$(python -c 'import torch; print(torch.__version__)')
if [[ "$before" != none && "$before" != "$after" ]]; then
    echo "bench/install.sh: torch changed from $before to $after" >&2
    exit 1
fi
(cd bench && python -c '
import litdata, webdataset
import formats
formats.mosaic_streaming()
print("bench extras:", formats.available())
')
echo "torch $after"
