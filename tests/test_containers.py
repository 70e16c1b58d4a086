"""docker/runtime.Dockerfile, built as the docs build it (docker/build-runtime.sh) on a Debian base made here: no
container registry is reachable, so the base is `debootstrap --variant=minbase` from Debian's mirror, imported with
`docker import`. Inside it, with no torch, `nnlab predict` gives the classes it gives outside (with --network=host),
and the image's default command serves the demo's page on the port published to 127.0.0.1. Needs a Docker daemon
and debootstrap (.ci/run installs both and starts the daemon); NNLAB_REQUIRE_DOCKER turns the skip into a failure.
The build time and the image's size are printed (-s shows them)."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ROOT, digit_images, run_module
from tests.slurm_cluster import free_port

pytestmark = pytest.mark.slow
BASE = "localhost/nnlab-tests/debian:bookworm"  # localhost/: Docker uses it without asking a registry
TAG = "localhost/nnlab-tests/runtime:latest"
FIXTURE = ROOT / "tests" / "fixtures" / "mlp-0.1.0.ckpt"


def docker() -> str | None:
    """Debian's client (a newer one earlier on PATH may not build without buildx), with a daemon answering."""
    found = next((c for c in ("/usr/bin/docker", shutil.which("docker")) if c and os.path.exists(c)), None)
    if found and subprocess.run([found, "info"], capture_output=True, timeout=60).returncode == 0:
        return found
    return None


@pytest.fixture(scope="module")
def client():
    found = docker()
    if found is None or shutil.which("debootstrap") is None:
        if os.environ.get("NNLAB_REQUIRE_DOCKER"):
            pytest.fail("NNLAB_REQUIRE_DOCKER is set but no Docker daemon answers or debootstrap is missing")
        pytest.skip("needs a running Docker daemon and debootstrap (apt-get install docker.io debootstrap)")
    return found


def run(*args, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def base_image(client: str, tmp_path: Path):
    """Debian bookworm, minbase, from the machine's own Debian mirror, as a local image (made once per machine)."""
    if subprocess.run([client, "image", "inspect", BASE], capture_output=True).returncode == 0:
        return
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    mirror = next(
        (line.split()[1] for line in sources.read_text().splitlines() if line.startswith("URIs:")),
        "http://deb.debian.org/debian",
    ) if sources.exists() else "http://deb.debian.org/debian"  # fmt: skip
    root = tmp_path / "debian"
    run("debootstrap", "--variant=minbase", "bookworm", root, mirror)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    run(client, "import", "-", BASE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(root, ignore_errors=True)


def test_the_runtime_image_predicts_without_torch_and_serves_the_demo(client, tmp_path):
    export = tmp_path / "digits"
    run_module("nnlab", "export", FIXTURE, "--out", export, timeout=300)
    base_image(client, tmp_path)
    started = time.monotonic()
    env = {**os.environ, "BASE": BASE, "DOCKER": client, "UV": str(Path(sys.executable).parent / "uv")}
    run("bash", ROOT / "docker" / "build-runtime.sh", export, TAG, env=env, cwd=tmp_path)
    built = time.monotonic() - started
    size = int(run(client, "image", "inspect", "-f", "{{.Size}}", TAG).stdout)
    print(f"runtime image: built in {built:.0f} s, {size / 1e6:.0f} MB")
    try:
        folder = tmp_path / "in"
        folder.mkdir()
        (image,), _ = digit_images(1, seed=3)
        Image.fromarray(image).save(folder / "digit.png")
        inside = run(client, "run", "--rm", "--network=host", "-v", f"{folder}:/in:ro", TAG,
                     "predict", "/model", "/in/digit.png").stdout  # fmt: skip
        outside = run_module("nnlab", "predict", export, folder / "digit.png").stdout
        assert inside.split("\t")[0] == outside.split("\t")[0] and inside.strip().endswith("\t/in/digit.png")
        no_torch = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
        run(client, "run", "--rm", "--entrypoint", "python3", TAG, "-c", no_torch)
        port = free_port()
        name = f"nnlab-tests-demo-{port}"
        run(client, "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:7860", TAG)  # its default: the demo
        try:
            page, deadline = None, time.monotonic() + 120
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            while page is None and time.monotonic() < deadline:
                try:
                    with opener.open(f"http://127.0.0.1:{port}/", timeout=5) as response:
                        page = response.read().decode()
                except OSError:
                    time.sleep(1)
            logs = subprocess.run([client, "logs", name], capture_output=True, text=True).stdout
            assert page is not None and "<html" in page, f"the demo did not answer:\n{logs}"
            assert "nnlab demo: /model on http://localhost:7860/" in logs
        finally:
            subprocess.run([client, "stop", "-t", "5", name], capture_output=True)
    finally:
        subprocess.run([client, "rmi", "-f", TAG], capture_output=True)
