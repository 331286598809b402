"""docker/: what can be checked without a Docker engine, Slurm or Kubernetes.

- The image's install steps (docker/install.sh) run for real, outside Docker, on exactly the files the
  Dockerfile copies: offline and without dependencies (those come from this environment), into a fresh
  virtual environment; and dry, printing the pip commands with and without torch.
- The compose file's scheduler and worker commands start a real Dask cluster on 127.0.0.1 (ports
  replaced), its healthcheck passes against that scheduler, and its CLI command parses with the CLI's
  own parser and names the scheduler the workers join.
- The Kubernetes manifest agrees with the image and with itself (scheduler Service, worker settings,
  Secret, the Job's scheduler address).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dask.utils import parse_bytes
from distributed import Client
from packaging.requirements import Requirement

from spectral_corpus.pipeline import cli

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
INSTALL_SH = DOCKER / "install.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _kubernetes() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DOCKER / "kubernetes" / "daskcluster.yaml").read_text()))


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _instructions(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in _dockerfile() if line.split(None, 1)[0].upper() == keyword]


def _option(command: list[str], name: str) -> str:
    """The value after ``name`` in an argument list."""
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def _kube_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (binary suffixes, as used here) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+)([KMGT]i)", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    return int(match.group(1)) * units[match.group(2)]


def _torch_pins() -> set[str]:
    """Every torch requirement of pyproject.toml (dependencies and extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    return {str(req.specifier) for req in map(Requirement, requirements) if req.name == "torch"}


def _install_sh_torch() -> str:
    match = re.search(r"^TORCH_VERSION=(\S+)$", INSTALL_SH.read_text(), re.MULTILINE)
    assert match, "docker/install.sh sets no TORCH_VERSION"
    return match.group(1)


# --- the image ---------------------------------------------------------------------------------------


def test_install_sh_pins_torch_as_pyproject_does() -> None:
    assert _torch_pins() == {f"=={_install_sh_torch()}"}


def test_install_sh_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dockerfile_installs_with_install_sh_as_a_non_root_user() -> None:
    runs = _instructions("RUN")
    assert any("bash docker/install.sh" in run and 'INSTALL_TRAIN="$TRAIN"' in run for run in runs), runs
    assert any(copy.split() == ["docker/install.sh", "./docker/install.sh"] for copy in _instructions("COPY"))
    assert _instructions("ARG").count("TRAIN=0") == 1  # torch only on request
    (user,) = _instructions("USER")
    assert user == f"{_image_uid()}:{_image_uid()}" and _image_uid() != 0  # by number, for runAsNonRoot
    assert _instructions("ENTRYPOINT") == ['["spectral-corpus"]']


def _image_uid() -> int:
    match = re.search(r"useradd [^&]*--uid (\d+)", " ".join(_instructions("RUN")))
    assert match, "the Dockerfile creates no user with a fixed uid"
    return int(match.group(1))


def test_dockerfile_copies_what_the_package_needs() -> None:
    """The package's subfolders are links to the four packages beside it: each must be copied too."""
    copied = {src for copy in _instructions("COPY") for src in copy.split()[:-1]}
    links = {path.readlink().name for path in (ROOT / "spectral_corpus").iterdir() if path.is_symlink()}
    assert links == {"catalog", "stages", "pipeline", "training"}
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", readme, "spectral_corpus", *links} <= copied


def _dry_run(train: bool, python: str = "/nonexistent/python") -> list[list[str]]:
    """install.sh's printed pip commands, split into words (the Python checks are left out)."""
    env = {**os.environ, "INSTALL_DRY_RUN": "1", "INSTALL_TRAIN": "1" if train else "0", "PYTHON": python}
    result = subprocess.run(["bash", str(INSTALL_SH)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert lines, result.stdout
    return [shlex.split(line[2:]) for line in lines if " -m pip " in line]


@pytest.mark.parametrize("train", [False, True], ids=["pipeline", "train"])
def test_install_sh_dry_run_names_the_project_and_the_torch_pin(train: bool) -> None:
    python = "/nonexistent/python"  # a dry run runs nothing: not even the interpreter
    commands = _dry_run(train, python)
    installs = [command for command in commands if command[:4] == [python, "-m", "pip", "install"]]
    assert [python, "-m", "pip", "check"] in commands
    *torch, project = installs
    assert project[-1] == (f"{ROOT}[train]" if train else str(ROOT))
    assert "--index-url" not in project  # the project's dependencies come from PyPI
    if train:  # torch first, from the CPU index only: [train]'s torch==X is then already satisfied
        assert torch == [[python, "-m", "pip", "install", "--index-url", CPU_INDEX, f"torch=={_install_sh_torch()}"]]
        assert {f"=={torch[0][-1].split('==')[1]}"} == _torch_pins()
    else:
        assert torch == [] and not any("torch" in word for command in commands for word in command)


def test_install_sh_refuses_a_bad_flag() -> None:
    env = {**os.environ, "INSTALL_DRY_RUN": "1", "INSTALL_TRAIN": "yes"}
    result = subprocess.run(["bash", str(INSTALL_SH)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "INSTALL_TRAIN must be 0 or 1" in result.stderr


def _copy_build_context(into: Path) -> Path:
    """Lay out the files exactly as the Dockerfile's COPY instructions put them under its WORKDIR."""
    (workdir,) = {w for w in _instructions("WORKDIR") if w != "/data"}
    for copy in _instructions("COPY"):
        *sources, dest = copy.split()
        assert not any(s.startswith("--") for s in sources), copy
        for source in sources:
            target = into / dest if not dest.endswith("/") else into / dest / Path(source).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / source, target)
    assert workdir == "/opt/spectral-corpus"
    return into


def test_install_sh_installs_the_copied_project(tmp_path: Path) -> None:
    """install.sh for real on the Dockerfile's files, into a fresh virtual environment, offline: the
    dependencies are this environment's (``--system-site-packages``), the project is built and installed
    from the copied files, and the script's own checks pass (pip check, imports without torch, GDAL's
    drivers, the console scripts the image runs)."""
    project = _copy_build_context(tmp_path / "opt" / "spectral-corpus")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {
        **os.environ,
        "PYTHON": str(python),
        "INSTALL_PIP_OPTIONS": "--no-deps --no-build-isolation --no-index --quiet",
    }
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["bash", str(project / "docker" / "install.sh"), str(project)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("install.sh: done")
    assert (venv / "bin" / "spectral-corpus").is_file()
    where = "import spectral_corpus, pathlib; print(pathlib.Path(spectral_corpus.__file__).parent)"
    installed = subprocess.run([str(python), "-I", "-c", where], capture_output=True, text=True, check=True)
    package = Path(installed.stdout.strip())
    assert package.is_relative_to(venv)
    for folder in ["catalog", "stages", "pipeline", "training"]:
        modules = {p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
        assert modules and all((package / folder / module).is_file() for module in modules), folder
    assert (package / "catalog" / "data" / "enmap_bands.csv").is_file()


# --- compose ---------------------------------------------------------------------------------------------


def test_compose_services_share_the_image_and_the_scheduler() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"scheduler", "worker", "cli"}
    scheduler, worker, client = services["scheduler"], services["worker"], services["cli"]
    for service in services.values():
        assert service["image"] == scheduler["image"]
        assert (DOCKER / service["build"]["context"]).resolve() == ROOT
        assert (ROOT / service["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    # One scheduler, two workers of one thread each, under a container limit above Dask's own.
    assert scheduler["entrypoint"] == ["dask"] and scheduler["command"][0] == "scheduler"
    assert worker["entrypoint"] == ["dask"] and worker["command"][0] == "worker"
    assert worker["deploy"]["replicas"] == 2
    assert _option(worker["command"], "--nthreads") == "1"
    dask_limit = parse_bytes(_option(worker["command"], "--memory-limit"))
    assert 2 * 2**30 <= dask_limit < parse_bytes(worker["deploy"]["resources"]["limits"]["memory"])
    # The CLI runs the image's entrypoint (spectral-corpus) against the scheduler the workers join.
    assert "entrypoint" not in client and client["profiles"] == ["cli"]
    address = f"tcp://scheduler:{_option(scheduler['command'], '--port')}"
    assert worker["command"][1] == address
    args = cli._parser().parse_args(client["command"])
    assert args.command == "build" and args.scheduler == address
    # Workers see the CLI's paths and get the same environment for remote data.
    assert worker["volumes"] == client["volumes"] == ["data:/data"] and "data" in compose["volumes"]
    assert str(args.out).startswith("/data/") and args.source.startswith("/data/")
    assert worker["environment"] == client["environment"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(worker["environment"])
    # The workers and the CLI wait for a healthy scheduler; the healthcheck asks its dashboard port.
    dashboard = _option(scheduler["command"], "--dashboard-address").lstrip(":")
    assert f":{dashboard}/health" in scheduler["healthcheck"]["test"][-1]
    assert worker["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert client["depends_on"]["scheduler"]["condition"] == "service_healthy"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each in its own session; killed (with their children) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_compose_commands_start_a_cluster(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    """The scheduler's and workers' commands as compose runs them, on 127.0.0.1 with free ports."""
    services = _compose()["services"]
    port, dashboard = _free_port(), _free_port()
    scheduler = services["scheduler"]["command"]
    compose_dashboard = _option(scheduler, "--dashboard-address").lstrip(":")
    replace = {
        _option(scheduler, "--host"): "127.0.0.1",
        _option(scheduler, "--port"): str(port),
        _option(scheduler, "--dashboard-address"): f":{dashboard}",
        services["worker"]["command"][1]: f"tcp://127.0.0.1:{port}",
    }
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}

    def start(service: str, name: str) -> None:
        command = [*services[service]["entrypoint"], *(replace.get(a, a) for a in services[service]["command"])]
        log = (tmp_path / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=tmp_path, start_new_session=True)
        )

    start("scheduler", "scheduler")
    check = services["scheduler"]["healthcheck"]
    assert check["test"][:2] == ["CMD", "python"]
    probe = [sys.executable, *(a.replace(f":{compose_dashboard}/", f":{dashboard}/") for a in check["test"][2:])]
    deadline = time.monotonic() + 30
    while subprocess.run(probe, capture_output=True, timeout=10).returncode != 0:
        assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
        time.sleep(0.5)
    with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/health", timeout=5) as answer:
        assert answer.read() == b"ok"

    replicas = services["worker"]["deploy"]["replicas"]
    for n in range(replicas):
        start("worker", f"worker-{n}")
    with Client(f"tcp://127.0.0.1:{port}", timeout=30) as client:
        client.wait_for_workers(replicas, timeout=60)
        workers = client.scheduler_info()["workers"].values()
        limit = parse_bytes(_option(services["worker"]["command"], "--memory-limit"))
        assert [(w["nthreads"], w["memory_limit"]) for w in workers] == [(1, limit)] * replicas
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3


# --- Kubernetes ------------------------------------------------------------------------------------------


def test_kubernetes_manifest_agrees_with_the_image_and_itself() -> None:
    cluster, job = _kubernetes()
    assert (cluster["apiVersion"], cluster["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    name = cluster["metadata"]["name"]
    worker_pod, scheduler_pod = cluster["spec"]["worker"]["spec"], cluster["spec"]["scheduler"]["spec"]
    job_pod = job["spec"]["template"]["spec"]
    (worker,), (scheduler,), (build,) = worker_pod["containers"], scheduler_pod["containers"], job_pod["containers"]
    assert worker["image"] == scheduler["image"] == build["image"]
    for pod in (worker_pod, scheduler_pod, job_pod):
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": _image_uid()}
    # The image's entrypoint is spectral-corpus: the Dask containers replace it, the Job uses it.
    assert worker["command"] == scheduler["command"] == ["dask"] and "command" not in build
    assert worker["args"][0] == "worker" and scheduler["args"][0] == "scheduler"
    assert _option(worker["args"], "--nthreads") == "1"
    limit = _kube_bytes(worker["resources"]["limits"]["memory"])
    assert parse_bytes(_option(worker["args"], "--memory-limit")) < limit
    assert _kube_bytes(worker["resources"]["requests"]["memory"]) == limit
    # The scheduler's ports and Service; the Job's CLI reaches it by the Service's name.
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports == {"tcp-comm": int(_option(scheduler["args"], "--port")), "http-dashboard": 8787}
    assert _option(scheduler["args"], "--dashboard-address") == ":8787"
    assert scheduler["readinessProbe"]["httpGet"] == {"port": "http-dashboard", "path": "/health"}
    service = cluster["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == name
    assert {p["name"]: p["port"] for p in service["ports"]} == ports
    args = cli._parser().parse_args(build["args"])
    assert args.command == "build" and args.scheduler == f"tcp://{name}-scheduler:{ports['tcp-comm']}"
    assert str(args.out).startswith("s3://")  # no shared disk between the pods
    # Workers and the Job read the bucket's keys from one Secret.
    assert worker["envFrom"] == build["envFrom"] == [{"secretRef": {"name": "spectral-corpus-s3"}}]
