"""Published md5s and our own sha256 manifest for the reference cache.

GIAB publishes md5s inconsistently (a `<file>.md5` sidecar for some files, a per-directory `md5sum` listing
for others, none for many; docs/fetch.md), so verification is layered: an md5 published next to the
file when one can be found, else the md5 listed for it in the release's `current.tree` manifest, otherwise the sha256 we pinned the first time the file was downloaded (kept in
`<reference_dir>/giab-manifest.json`), so every later download - another machine, a deleted cache - is checked
against the bytes the first run accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from filelock import FileLock

from genoflows.files import atomic_output

MANIFEST_NAME = "giab-manifest.json"
_MD5_LINE = re.compile(r"^\s*(?:MD5\s*\((?P<n1>.+)\)\s*=\s*(?P<h1>[0-9a-fA-F]{32})|(?P<h2>[0-9a-fA-F]{32})\s+[* ]?(?P<n2>.+?))\s*$")
_BARE_MD5 = re.compile(r"^\s*([0-9a-fA-F]{32})\s*$")


def md5_for(listing: str, filename: str, listing_name: str) -> str | None:
    """The md5 of `filename` in a checksum listing (`md5sum` output, BSD `MD5 (f) = h`, or one bare hash).

    `listing_name` is the listing's URL or path. A bare hash names no file, so it is taken only from the
    file's own sidecar `<filename>.md5`; a shared listing (`md5sum`, `HG002_benchmark.md5`, ...) must name the
    file. A listing's names may carry directories (`./GRCh38/x.vcf.gz`); the basename decides.
    """
    lines = [ln for ln in listing.splitlines() if ln.strip()]
    if len(lines) == 1 and (bare := _BARE_MD5.match(lines[0])):
        own_sidecar = PurePosixPath(urlparse(listing_name).path).name == f"{filename}.md5"
        return bare.group(1).lower() if own_sidecar else None
    for line in lines:
        m = _MD5_LINE.match(line)
        if not m:
            continue
        name = m.group("n1") or m.group("n2")
        digest = m.group("h1") or m.group("h2")
        if name.strip().rsplit("/", 1)[-1] == filename:
            return digest.lower()
    return None


TREE_NAME = "current.tree"


def md5_from_tree(lines: Iterable[str], relpath: str) -> str | None:
    """The md5 of the file at `relpath` (relative to the tree's own directory) in a GIAB `current.tree`.

    GIAB's FTP top holds `current.tree`, which "describes all the files and their md5sums" (README.ftp_structure):
    one line per entry, tab-separated, the path first and, for a file, its md5 among the later columns (the
    1000 Genomes layout it follows: path, type, size, date, md5). A tree copied from the top of the FTP names
    files with a longer prefix (`ftp/release/...`) than the mirror serving it, so an entry matches when it is
    `relpath` or ends with `/<relpath>`: the whole path below the tree's directory must agree, never just the
    file name (GRCh37 and GRCh38 folders hold files with the same names elsewhere); an exact path wins, and when
    several longer entries end with `relpath` and disagree there is no answer. Directory entries are skipped.
    """
    want = relpath.strip("/")
    exact, by_suffix = None, set()
    for line in lines:
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 2 or fields[1].strip() in ("directory", "dir", "d"):
            continue
        path = fields[0].strip()
        path = path[2:] if path.startswith("./") else path
        if path != want and not path.endswith(f"/{want}"):
            continue
        hashes = [f.strip().lower() for f in fields[1:] if _BARE_MD5.match(f)]
        if not hashes:
            continue
        if path == want:
            exact = hashes[-1]
        else:
            by_suffix.add(hashes[-1])
    if exact is not None:
        return exact
    return by_suffix.pop() if len(by_suffix) == 1 else None  # two files that end the same way: no answer


@dataclass
class PinnedFile:
    """What the first download of a file looked like."""

    url: str
    sha256: str
    size: int
    md5_source: str | None
    pinned: str


class Manifest:
    """sha256 pins for files in the reference cache, keyed by their path relative to the cache root."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / MANIFEST_NAME
        self._lock = FileLock(str(self.root / f".{MANIFEST_NAME}.lock"))  # hidden, like fetch's locks

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path} is not valid JSON ({exc}); fix or delete it to re-pin checksums") from exc

    def get(self, relpath: str) -> PinnedFile | None:
        with self._lock:
            entry = self._read().get(relpath)
        return PinnedFile(**entry) if entry else None

    def pin(self, relpath: str, *, url: str, sha256: str, size: int, md5_source: str | None) -> PinnedFile:
        """Record the checksum of a freshly verified file (write to a temp name, then rename)."""
        entry = PinnedFile(url, sha256, size, md5_source, datetime.now(UTC).isoformat(timespec="seconds"))
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = self._read()
            data[relpath] = asdict(entry)
            self._write(data)
        return entry

    def unpin(self, relpath: str) -> None:
        """Forget a pin that was taken from a bad body (a cache poisoned before content was checked)."""
        with self._lock:
            data = self._read()
            if data.pop(relpath, None) is not None:
                self._write(data)

    def _write(self, data: dict) -> None:
        with atomic_output(self.path) as tmp:  # unique temp name, then rename
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
