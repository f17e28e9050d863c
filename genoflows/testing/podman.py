"""Podman as the Docker engine for tests: a registry-free base image, the flow image, the Docker API service.

No Docker daemon runs on the CI machines and no registry is reachable; podman (Debian) speaks the Docker Engine
API. Recipe (each step checked on these machines): runc + cgroupfs + no default ulimits in a containers.conf,
a debootstrap-made bookworm base image, `podman build` with the host's CA bundle mounted (the proxy's CA; not
baked in), `podman system service` on a unix socket for docker-py / prefect-docker.

Both images are cached in podman's own storage between runs: the base image by its recipe, the flow image by a
hash of the Dockerfile and every file it copies, so a second run builds nothing and a changed file rebuilds
only the layers after it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_IMAGE = "localhost/genoflows-base:bookworm-" + hashlib.sha256(BASE_PACKAGES.encode()).hexdigest()[:8]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: What deployments/Dockerfile copies from the build context (its hash keys the flow image's tag).
IMAGE_INPUTS = ("deployments/Dockerfile", "deployments/constraints.txt", "pyproject.toml", "README.md", "prefect.yaml",
                "deployments/image_name.py", "genoflows", "tasks", "flows", "blocks")


def podman_env(conf_dir: Path) -> dict[str, str]:
    """The environment for every podman call: our containers.conf."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def _podman(args: list[str], env: dict[str, str], timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)


def image_exists(image: str, env: dict[str, str]) -> bool:
    return _podman(["image", "exists", image], env, timeout=120).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*")) + [Path("/etc/apt/sources.list")]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith("URIs:") and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2 and "security" not in line:
                return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


def ensure_base_image(env: dict[str, str]) -> tuple[str, float]:
    """The debootstrap-made base image (made once, about a minute); returns (image, seconds spent)."""
    if image_exists(BASE_IMAGE, env):
        return BASE_IMAGE, 0.0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="genoflows-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        boot = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                               str(rootfs), debian_mirror()], capture_output=True, text=True, timeout=1800)
        if boot.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{boot.stdout[-2000:]}\n{boot.stderr[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=env,
                                  capture_output=True, text=True, timeout=600)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr[-2000:]}")
    return BASE_IMAGE, time.monotonic() - t0


def image_key(root: Path) -> str:
    """A hash of the Dockerfile and everything it copies (bytes and relative paths; caches skipped)."""
    digest = hashlib.sha256()
    for item in IMAGE_INPUTS:
        path = root / item
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                      and "__pycache__" not in p.parts and p.suffix != ".pyc")
        for f in files:
            digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def ensure_flow_image(root: Path, env: dict[str, str], log: Path) -> tuple[str, float]:
    """localhost/genoflows:test-<key> built from deployments/Dockerfile on the base image, unless cached."""
    base, spent = ensure_base_image(env)
    image = f"localhost/genoflows:test-{image_key(root)}"
    if image_exists(image, env):
        return image, spent
    t0 = time.monotonic()
    args = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-f", "deployments/Dockerfile",
            "-t", image]
    if HOST_CA_BUNDLE.exists():  # the proxy's CA for pip/apt inside the build; mounted, not baked in
        args[1:1] = ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    with open(log, "w") as out:
        built = subprocess.run(["podman", *args, "."], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                               timeout=3600)
    if built.returncode != 0:
        raise RuntimeError(f"podman build failed, see {log}:\n{log.read_text()[-3000:]}")
    return image, spent + time.monotonic() - t0


def have_podman() -> str | None:
    """Why podman cannot be used here (None when it can)."""
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs it)"
    return None
