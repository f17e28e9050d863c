"""Seeded synthetic RNA-seq: a transcriptome with isoforms, FASTQ.gz runs, and an ENA-like server tree.

Tests, the demo and the benchmark need data that exercises kallisto for real (shared exons so the EM has
work to do, sequencing errors, uneven abundances) yet is generated in seconds without network access.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from genoflows.fetch import file_digest

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_COMP = np.zeros(256, dtype=np.uint8)
for _a, _b in zip(b"ACGTN", b"TGCAN", strict=True):
    _COMP[_a] = _b


@dataclass(frozen=True)
class SimRun:
    """A generated run: its files and what was drawn (true fragment counts per transcript)."""

    run: str
    layout: Literal["paired", "single"]
    files: tuple[Path, ...]
    n_fragments: int
    true_counts: dict[str, int] = field(default_factory=dict, compare=False)


def make_transcriptome(path: Path, *, n_genes: int = 60, seed: int = 1) -> dict[str, str]:
    """Write a FASTA of genes with 1-3 isoforms built from shared exons; return name -> sequence."""
    rng = np.random.default_rng(seed)
    seqs: dict[str, str] = {}
    for g in range(n_genes):
        exons = [BASES[rng.integers(0, 4, rng.integers(120, 450))].tobytes().decode() for _ in range(rng.integers(3, 8))]
        n_iso = int(rng.integers(1, 4))
        for k in range(n_iso):
            keep = list(exons) if k == 0 else [e for j, e in enumerate(exons) if j != (k % len(exons))]
            seqs[f"GENE{g:04d}.T{k + 1}"] = "".join(keep)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        for name, s in seqs.items():
            fh.write(f">{name}\n")
            for i in range(0, len(s), 70):
                fh.write(s[i : i + 70] + "\n")
    tmp.replace(path)
    return seqs


def _reads(seqs_arr: np.ndarray, starts: np.ndarray, length: int, reverse: np.ndarray) -> np.ndarray:
    idx = starts[:, None] + np.arange(length)[None, :]
    reads = seqs_arr[idx]
    rc = _COMP[reads[reverse][:, ::-1]]
    reads[reverse] = rc
    return reads


def _mutate(reads: np.ndarray, rate: float, rng: np.random.Generator) -> None:
    mask = rng.random(reads.shape) < rate
    reads[mask] = BASES[rng.integers(0, 4, int(mask.sum()))]


def _write_fastq(path: Path, run: str, mate: str, reads: np.ndarray, rng: np.random.Generator) -> None:
    n, length = reads.shape
    qual = (rng.choice(np.frombuffer(b"FFFF:,F:FFF", dtype=np.uint8), size=(n, length))).astype(np.uint8)
    seq_rows = reads.tobytes()
    q_rows = qual.tobytes()
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        chunk: list[bytes] = []
        for i in range(n):
            s = seq_rows[i * length : (i + 1) * length]
            q = q_rows[i * length : (i + 1) * length]
            chunk.append(b"@%s.%d%s\n%s\n+\n%s\n" % (run.encode(), i + 1, mate.encode(), s, q))
            if len(chunk) >= 20000:
                fh.write(b"".join(chunk))
                chunk.clear()
        fh.write(b"".join(chunk))
    tmp.replace(path)


def simulate_run(
    transcripts: dict[str, str],
    out_dir: Path,
    run: str,
    *,
    layout: Literal["paired", "single"] = "paired",
    n_fragments: int = 5000,
    read_length: int = 75,
    fragment_mean: int = 250,
    fragment_sd: int = 25,
    error_rate: float = 0.005,
    seed: int = 0,
) -> SimRun:
    """Sample fragments (lognormal abundances x length), write `<run>_1/_2.fastq.gz` or `<run>.fastq.gz`."""
    rng = np.random.default_rng(seed)
    names = list(transcripts)
    lens = np.array([len(transcripts[n]) for n in names])
    concat = np.frombuffer("".join(transcripts.values()).encode(), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    abundance = rng.lognormal(0.0, 1.5, len(names)) * (rng.random(len(names)) > 0.1)
    weights = abundance * np.maximum(lens - fragment_mean, 1)
    which = rng.choice(len(names), size=n_fragments, p=weights / weights.sum())
    frag = np.clip(rng.normal(fragment_mean, fragment_sd, n_fragments).astype(int), read_length, None)
    frag = np.minimum(frag, lens[which])
    start = offsets[which] + (rng.random(n_fragments) * (lens[which] - frag + 1)).astype(int)
    flip = rng.random(n_fragments) < 0.5
    out_dir.mkdir(parents=True, exist_ok=True)
    r1 = _reads(concat, np.where(flip, start + frag - read_length, start), read_length, flip)
    _mutate(r1, error_rate, rng)
    counts = np.bincount(which, minlength=len(names))
    true_counts = {n: int(c) for n, c in zip(names, counts, strict=True)}
    if layout == "single":
        path = out_dir / f"{run}.fastq.gz"
        _write_fastq(path, run, "", r1, rng)
        return SimRun(run, layout, (path,), n_fragments, true_counts)
    r2 = _reads(concat, np.where(flip, start, start + frag - read_length), read_length, ~flip)
    _mutate(r2, error_rate, rng)
    p1, p2 = out_dir / f"{run}_1.fastq.gz", out_dir / f"{run}_2.fastq.gz"
    _write_fastq(p1, run, "/1", r1, rng)
    _write_fastq(p2, run, "/2", r2, rng)
    return SimRun(run, layout, (p1, p2), n_fragments, true_counts)


def ena_relpath(run: str, filename: str) -> str:
    """ENA's layout: vol1/fastq/<first 6>/[0NN/]<run>/<file> (the extra level for accessions > 9 chars)."""
    digits = run[3:]
    extra = f"{int(digits[-3:]) if len(digits) > 6 else 0:03d}/" if len(digits) > 6 else ""
    return f"vol1/fastq/{run[:6]}/{extra}{run}/{filename}"


@dataclass
class EnaCatalog:
    """What a fake ENA knows: per run the filereport fields, and the tree it serves files from."""

    root: Path
    rows: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, sim: SimRun, *, host: str, extra_unpaired: Path | None = None, md5_override: str | None = None,
            unpaired_first: bool = False) -> None:  # fmt: skip
        """Place the run's files in the tree and record fastq_ftp/md5/bytes as ENA would (no scheme); ENA lists a
        paired run's unpaired third file first for some runs (`unpaired_first`)."""
        extra = [extra_unpaired] if extra_unpaired else []
        files = extra + list(sim.files) if unpaired_first else list(sim.files) + extra
        ftp, md5s, sizes = [], [], []
        for f in files:
            rel = ena_relpath(sim.run, f.name)
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.resolve() != f.resolve():
                dest.write_bytes(f.read_bytes())
            ftp.append(f"{host}/{rel}")
            md5s.append(file_digest(dest, "md5"))
            sizes.append(str(dest.stat().st_size))
        if md5_override:
            md5s[0] = md5_override
        self.rows[sim.run] = {
            "run_accession": sim.run,
            "fastq_ftp": ";".join(ftp),
            "fastq_md5": ";".join(md5s),
            "fastq_bytes": ";".join(sizes),
            "library_layout": sim.layout.upper(),
            "read_count": str(sim.n_fragments),  # spots: pairs for paired runs, reads for single-end ones
        }

    def add_empty(self, run: str, layout: str = "PAIRED") -> None:
        """A run ENA knows but has no FASTQ for (empty fastq_ftp, as for ERR1346134)."""
        self.rows[run] = {"run_accession": run, "fastq_ftp": "", "fastq_md5": "", "fastq_bytes": "", "library_layout": layout}

    def filereport_handler(self) -> Callable[[dict[str, list[str]]], tuple[int, str, bytes]]:
        """A FileServer route answering `/filereport?accession=..&fields=..` like ENA's portal API (TSV)."""

        def handler(query: dict[str, list[str]]) -> tuple[int, str, bytes]:
            acc = (query.get("accession") or [""])[0]
            fields = (query.get("fields") or ["run_accession,fastq_ftp,fastq_md5,fastq_bytes"])[0].split(",")
            row = self.rows.get(acc)
            if row is None:  # ENA answers an unknown accession with a 204/empty body or an error text
                return 204, "text/plain", b""
            lines = ["\t".join(fields), "\t".join(row.get(f, "") for f in fields)]
            return 200, "text/plain", ("\n".join(lines) + "\n").encode()

        return handler


def write_metadata(path: Path, rows: list[dict[str, str]]) -> None:
    """A minimal amalgkit-style metadata.tsv from dict rows (columns from the union, in order of appearance)."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def make_sra(sim: SimRun, dest: Path) -> Path:
    """Pack a simulated run into a real `.sra` (latf-load + kar, offline) for the AWS/fasterq-dump path."""
    import shutil
    import tempfile

    from genoflows.toolrun import run_tool

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sra-", dir=dest.parent) as tmp:
        plain = []
        for f in sim.files:
            out = Path(tmp) / f.name.removesuffix(".gz")
            with gzip.open(f, "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            plain.append(out)
        arch = Path(tmp) / "arch"
        run_tool(["latf-load", "--quality", "PHRED_33", "-o", str(arch), *map(str, plain)])
        run_tool(["kar", "--create", str(Path(tmp) / "run.sra"), "-d", str(arch)])
        (Path(tmp) / "run.sra").replace(dest)
    return dest


def ena_server(root: Path, *, max_connections: int | None = None, bandwidth_bytes_per_s: float | None = None):
    """A FileServer that behaves like ENA's file service towards one client: at most `max_connections` downloads at
    once (more get 503 + Retry-After, as a provider's per-client cap does), each throttled to the per-connection
    bandwidth, and it records how many downloads ran at once (`.max_active`) and how many it refused (`.refused`)."""
    import threading
    import time

    from genoflows.testing.http_server import FileServer

    server = FileServer(root, bandwidth_bytes_per_s=bandwidth_bytes_per_s)
    server.max_connections = max_connections
    server.active = server.max_active = server.refused = 0
    server.busy_seconds = 0.0  # summed over downloads: busy / (wall x connections) = how well the cap was used
    lock = threading.Lock()
    base = server._httpd.RequestHandlerClass

    class Capped(base):  # type: ignore[misc, valid-type]
        def _send_file(self, target, path, fault):
            if self.command != "GET":
                return super()._send_file(target, path, fault)
            with lock:
                refuse = server.max_connections is not None and server.active >= server.max_connections
                if refuse:
                    server.refused += 1
                else:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
            if refuse:
                self._log(503)
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            t0 = time.monotonic()
            try:
                return super()._send_file(target, path, fault)
            finally:
                with lock:
                    server.active -= 1
                    server.busy_seconds += time.monotonic() - t0

    server._httpd.RequestHandlerClass = Capped
    return server
