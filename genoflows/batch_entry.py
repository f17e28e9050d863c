"""The container side of a Batch tool job: `python -m genoflows.batch_entry s3://…/spec.json`.

Reads the spec written by `genoflows.batch.BatchRunner.run`, downloads the inputs below a scratch directory
(`GENOFLOWS_BATCH_SCRATCH`, default `/scratch`), rewrites the argv's host paths to the scratch copies, runs the
tool (argv, no shell) with its output streamed to stdout (CloudWatch picks it up), and uploads every new or
changed file of the working directories. The tool's exit code is the job's exit code.

Small text files that name files by path get the same rewrite as the argv: an input such as regenie's
`_pred.list` (host paths of the `.loco` files, staged beside it) is pointed at the scratch copies, and an output
such as the `_pred.list` step 1 writes here is pointed back at the host directories the outputs return to.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3

from genoflows.toolrun import which

LIST_FILE_LIMIT = 1 << 20  # list files are small; bigger files are data, never scanned for paths


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
    rewrite = _rewriter(mapping)
    staged: dict[Path, int] = {}
    for local, uri in spec["inputs"].items():
        dest = Path(mapping[str(Path(local).parent)]) / Path(local).name
        s3.download_file(*_split(uri), str(dest))
        _rewrite_list_file(dest, rewrite)
        staged[dest] = dest.stat().st_mtime_ns

    argv = [rewrite(t) for t in spec["argv"]]
    argv[0] = which(argv[0]) or argv[0]  # as the tool runner finds it: on PATH, else beside this interpreter
    cwd = rewrite(spec["cwd"]) if spec.get("cwd") else None
    print(f"genoflows: running {spec['tool']} with {len(spec['inputs'])} staged inputs", flush=True)
    proc = subprocess.run(argv, cwd=cwd, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if proc.returncode == 0:
        out_bucket, out_prefix = _split(spec["outputs"])
        back = _rewriter({scratch_dir: host for host, scratch_dir in mapping.items()})
        for i in range(len(spec["workdirs"])):
            root = Path(mapping[spec["workdirs"][i]])
            for f in sorted(p for p in root.rglob("*") if p.is_file()):
                if staged.get(f) == f.stat().st_mtime_ns:
                    continue  # an input, unchanged
                _rewrite_list_file(f, back)
                s3.upload_file(str(f), out_bucket, f"{out_prefix}/{i}/{f.relative_to(root).as_posix()}")
    return proc.returncode


def _rewriter(prefixes: dict[str, str]):
    """Replace directory prefixes in text, longest first, only where a path continues or ends (/a/b is not
    /a/bc), in one pass so a replacement is never replaced again."""
    if not prefixes:
        return lambda text: text
    pattern = re.compile("(?:" + "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
                         + r""")(?=[/\s"',;:=)]|$)""")
    return lambda text: pattern.sub(lambda m: prefixes[m.group(0)], text)


def _rewrite_list_file(path: Path, rewrite) -> None:
    """Rewrite the paths in a small UTF-8 text file (a list of files); data and binary files stay as they are."""
    if path.stat().st_size > LIST_FILE_LIMIT:
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    new = rewrite(text)
    if new != text:
        path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
