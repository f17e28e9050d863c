"""The container side of a Batch tool job: `python -m genoflows.batch_entry s3://…/spec.json`.

Reads the spec written by `genoflows.batch.BatchRunner.run`, downloads the inputs below a scratch directory
(`GENOFLOWS_BATCH_SCRATCH`, default `/scratch`), rewrites the argv's host paths to the scratch copies, runs the
tool (argv, no shell) with its output streamed to stdout (CloudWatch picks it up), and uploads every new or
changed file of the working directories. The tool's exit code is the job's exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3

from genoflows.toolrun import which


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def main(spec_uri: str) -> int:
    s3 = boto3.client("s3")
    bucket, key = _split(spec_uri)
    spec = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    scratch = Path(os.environ.get("GENOFLOWS_BATCH_SCRATCH", "/scratch"))
    # Host directory -> scratch directory: working dirs first, then any input's own directory.
    mapping: dict[str, str] = {}
    for i, workdir in enumerate(spec["workdirs"]):
        mapping[workdir] = str(scratch / "work" / str(i))
    for local in spec["inputs"]:
        parent = str(Path(local).parent)
        mapping.setdefault(parent, str(scratch / "dirs" / str(len(mapping))))
    for directory in mapping.values():
        Path(directory).mkdir(parents=True, exist_ok=True)
    staged: dict[Path, int] = {}
    for local, uri in spec["inputs"].items():
        dest = Path(mapping[str(Path(local).parent)]) / Path(local).name
        s3.download_file(*_split(uri), str(dest))
        staged[dest] = dest.stat().st_mtime_ns

    def rewrite(token: str) -> str:
        for host in sorted(mapping, key=len, reverse=True):  # longest first: /a/b before /a
            if host in token:
                token = token.replace(host, mapping[host])
        return token

    argv = [rewrite(t) for t in spec["argv"]]
    argv[0] = which(argv[0]) or argv[0]  # as the tool runner finds it: on PATH, else beside this interpreter
    cwd = rewrite(spec["cwd"]) if spec.get("cwd") else None
    print(f"genoflows: running {spec['tool']} with {len(spec['inputs'])} staged inputs", flush=True)
    proc = subprocess.run(argv, cwd=cwd, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if proc.returncode == 0:
        out_bucket, out_prefix = _split(spec["outputs"])
        for i in range(len(spec["workdirs"])):
            root = Path(mapping[spec["workdirs"][i]])
            for f in sorted(p for p in root.rglob("*") if p.is_file()):
                if staged.get(f) == f.stat().st_mtime_ns:
                    continue  # an input, unchanged
                s3.upload_file(str(f), out_bucket, f"{out_prefix}/{i}/{f.relative_to(root).as_posix()}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
