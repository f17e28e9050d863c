"""Blocks register with the Prefect CLI and load back by name."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path


def test_block_register_and_roundtrip(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    from blocks import AwsCredentials, ToolImages

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    prefect = Path(sys.executable).parent / "prefect"
    out = subprocess.run(
        [str(prefect), "block", "register", "-m", "blocks"], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "genoflows-tool-images" in out.stdout or "Genoflows Tool Images" in out.stdout

    ToolImages(images={"hap.py": "pkrusche/hap.py:v0.3.12"}, engine="podman").save("lab-images", overwrite=True)
    loaded = ToolImages.load("lab-images")
    assert loaded.images == {"hap.py": "pkrusche/hap.py:v0.3.12"}

    secret = uuid.uuid4().hex  # made up per run: the test holds no credential
    AwsCredentials(aws_access_key_id="AKIA_TEST", aws_secret_access_key=secret).save("lab-aws", overwrite=True)
    creds = AwsCredentials.load("lab-aws")
    assert creds.aws_secret_access_key.get_secret_value() == secret
    assert secret not in repr(creds) and secret not in str(creds.model_dump())


def test_tool_images_block_accepts_only_allowed_engines_and_image_references():
    """Whoever edits the block decides what runs on the workers: options, paths and other engines are refused."""
    import pytest
    from pydantic import ValidationError

    from blocks import ToolImages

    ok = ToolImages(images={"hap.py": "pkrusche/hap.py:v0.3.12", "regenie": "ghcr.io/rgcgithub/regenie:v4.1.2"},
                    engine="podman")
    assert ok.engine == "podman"
    for bad in ({"engine": "sh"}, {"engine": "docker --privileged"},
                {"images": {"hap.py": "--privileged"}}, {"images": {"hap.py": "pkrusche/hap.py:v0.3.12 -v /:/host"}},
                {"images": {"hap.py": "/usr/bin/evil"}}, {"images": {"../hap.py": "pkrusche/hap.py:v0.3.12"}}):
        with pytest.raises(ValidationError):
            ToolImages(**bad)


def test_tool_images_applied_on_two_threads_stay_apart():
    """Two task runs on one worker's threads apply different ToolImages blocks and overlap: each sees only its
    own images and engine, and one leaving its block does not take the images from the other (a process-wide
    environment variable did both)."""
    import threading

    from blocks.tool_images import ToolImages
    from genoflows.toolrun import container_engine, image_for

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, list] = {"a": [], "b": []}

    def run_a():
        with ToolImages(images={"regenie": "registry.example/regenie:a"}, engine="docker").applied():
            a_in.set()
            b_in.wait(10)
            seen["a"].append((image_for("regenie"), container_engine()))
        a_out.set()

    def run_b():
        a_in.wait(10)
        with ToolImages(images={"regenie": "registry.example/regenie:b"}, engine="podman").applied():
            b_in.set()
            a_out.wait(10)
            seen["b"].append((image_for("regenie"), container_engine()))

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"a": [("registry.example/regenie:a", "docker")], "b": [("registry.example/regenie:b", "podman")]}
    assert image_for("regenie") is None  # nothing left behind in this thread either
