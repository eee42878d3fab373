"""Every numeric option has a range, and running out of memory is one sentence naming the option to lower."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import make_small_generator, write_photo
from timemachine import age
from timemachine.checkpoint import model_fingerprint, save_generator
from timemachine.cli import main
from timemachine.latents import save_latent


@pytest.fixture()
def env(cli_home):
    tmp_path = cli_home["tmp"]
    latent = tmp_path / "w.npz"
    save_latent(latent, cli_home["ws"][0])
    return {**cli_home, "photo": write_photo(tmp_path / "dog.jpg", quality=95), "latent": str(latent)}


def _refused(capsys, argv, pattern: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("timemachine: error:") and pattern in err[0], err


@pytest.mark.parametrize("option, value, pattern", [
    ("--seed", str(10**30), "seed must be a whole number from 0 to"),
    ("--seed", "-1", "seed must be a whole number from 0 to"),
    ("--steps", str(10**12), "steps must be between"),
    ("--early-stop", str(10**9), "early_stop_patience must be between"),
    ("--batch-size", str(10**9), "batch size must be between"),
    ("--pti-steps", str(10**9), "PTI steps"),
])
def test_projection_numbers_out_of_range_are_one_line(env, capsys, option, value, pattern):
    argv = ["project", env["photo"], "--model", env["model"], "--out", str(env["tmp"] / "o"), option, value]
    if option == "--pti-steps":
        argv.append("--pti")
    _refused(capsys, argv, pattern)
    assert not (env["tmp"] / "o").exists()


@pytest.mark.parametrize("option, value, pattern", [
    ("--strength", "1e308", "strength must be a number from -10 to 10"),
    ("--strength", "nan", "strength must be a number from -10 to 10"),
    ("--layers", "0-" + "9" * 40, "invalid layer selection"),
    ("--layers", "0-99", "does not exist"),
    ("--frames", str(10**9), "walk frames must be a whole number"),
    ("--batch-size", str(10**9), "batch size must be a whole number"),
    ("--fps", "1e300", "frames per second"),
    ("--crf", "99", "CRF"),
    ("--hold-end", "-3", "hold_end"),
])
def test_render_numbers_out_of_range_are_one_line(env, capsys, option, value, pattern):
    out = env["tmp"] / "r"
    _refused(capsys, ["render", env["latent"], "--model", env["model"], "--age-vector", "pups", "--out", str(out),
                      option, value], pattern)
    assert not out.exists() or not any(out.iterdir())


def test_running_out_of_memory_names_the_option_to_lower(env, tmp_path):
    """A real allocation failure (the address space is limited in a child process) ends in one sentence."""
    G = make_small_generator(resolution=128, w_dim=32, channel_max=64)
    model = tmp_path / "big.safetensors"
    save_generator(G, model)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    vector = tmp_path / "v.safetensors"
    age.save_vector_file(age.build_vector("v", ws[:1], ws[1:], method="pair", model_fingerprint=model_fingerprint(G)),
                         vector)
    latent = tmp_path / "big.npz"
    save_latent(latent, ws[0])
    argv = ["render", str(latent), "--model", str(model), "--age-vector", str(vector), "--out", str(tmp_path / "o"),
            "--frames", "1024", "--batch-size", "1024", "--no-gif"]
    script = textwrap.dedent(f"""
        import resource, sys
        import torch
        from timemachine.cli import main
        size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize'))
        limit = size + (1 << 30)                    # one more GiB of address space than at this point
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.exit(main({json.dumps(argv)}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1] == "timemachine: error: the machine ran out of memory while rendering frames (1024 at once); " \
                        "lower --batch-size", lines
    assert not (tmp_path / "o" / "video.mp4").exists()
