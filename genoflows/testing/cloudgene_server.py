"""A local Cloudgene-compatible imputation server (CG3 / MIS2 contract) on 127.0.0.1, with injectable faults.

Written from the REST contract in docs/imputation.md: multipart submit with `X-Auth-Token`, the job state
machine (1 waiting -> 2 running -> 3 exporting -> 4 success, or 5 failed with a type-1 step message),
`positionInQueue`, the per-user active-job limit, `outputParams[].files[]` with sha256 hashes, display
sizes and 10 downloads per file (every GET counts), anonymous `/share/results/{hash}/{name}` downloads
streamed without Content-Length, password-protected result zips (ZipCrypto, or AES when `aesEncryption`
was sent) holding real bgzipped dose VCFs, cancel by GET, retirement (state 7, "File not found in workspace").

Time runs `speed` times faster than the wall clock, or follows an injected `clock` (a benchmark shares a
virtual clock with the client, so hours of queueing pass in milliseconds). Faults are queued with `inject(kind, path_regex, times)`: `drop` (close the connection without an
answer), `500`, `503`, `truncate` (cut a download short). `submissions` counts accepted submit calls.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import hashlib
import io
import json
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pysam

from genoflows.imputation.cloudgene import display_size
from genoflows.testing.zipcrypto import write_aes, write_zipcrypto

pysam.set_verbosity(0)  # uploads have no index beside them; htslib would complain on every open

APP_FIELDS = {
    "files",
    "refpanel",
    "build",
    "r2Filter",
    "phasing",
    "population",
    "mode",
    "aesEncryption",
    "meta",
    "password",
    "job-name",
    "check1",
    "check2",
}
PANELS = {
    "hapmap-2": {"eur", "off", "all"},
    "1000g-phase-3-v5": {"eur", "afr", "amr", "sas", "eas", "all", "mixed", "off"},
    "h3africa-v6hc-s": {"afr", "all", "off", "mixed"},
    "topmed-r3": {"all", "off"},
    "hrc-r1.1": {"eur", "mixed", "all", "off"},
}


@dataclass
class Fault:
    kind: str
    path: re.Pattern
    times: int


@dataclass
class Job:
    id: str
    name: str
    user: str
    app: str
    params: dict
    submitted: float  # server time, seconds
    queue_s: float
    run_s: float
    export_s: float
    workdir: Path
    error: str | None = None
    no_steps: bool = False
    canceled_at: float | None = None
    retired: bool = False
    files: dict[str, dict] = field(default_factory=dict)  # hash -> {name, path, count}
    password: str | None = None


class CloudgeneServer:
    """Use as a context manager; `base_url` is the server root (the API lives under /api/v2)."""

    def __init__(
        self,
        *,
        tokens: dict[str, str] | None = None,
        revoked: set[str] | None = None,
        speed: float = 1.0,
        queue_seconds: float = 1.0,
        run_seconds: float = 1.0,
        export_seconds: float = 0.5,
        max_active_jobs: int = 2,
        max_downloads: int = 10,
        maintenance: bool = False,
        workdir: Path | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.tokens = dict(tokens or {})
        self.revoked = set(revoked or ())
        self.speed = speed
        self.queue_seconds, self.run_seconds, self.export_seconds = queue_seconds, run_seconds, export_seconds
        self.max_active_jobs, self.max_downloads, self.maintenance = (
            max_active_jobs,
            max_downloads,
            maintenance,
        )
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="cloudgene-")
        self.workdir = Path(workdir or self._tmp.name)
        self.jobs: dict[str, Job] = {}
        self.faults: list[Fault] = []
        self.submissions = 0
        self.status_requests = 0
        self.download_gets: dict[str, int] = {}
        self.next_job_error: str | None = None
        self.evil_zip = False
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._clock = clock
        self._httpd: ThreadingHTTPServer | None = None

    # --- life cycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> CloudgeneServer:
        server = self

        class Handler(_Handler):
            srv = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._tmp:
            self._tmp.cleanup()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def now(self) -> float:
        """Server time in seconds: the injected clock, or the wall clock running `speed` times faster."""
        if self._clock is not None:
            return self._clock()
        return (time.monotonic() - self._t0) * self.speed

    # --- test controls ------------------------------------------------------------------------------------------
    def inject(self, kind: str, path: str = ".*", times: int = 1) -> None:
        with self._lock:
            self.faults.append(Fault(kind, re.compile(path), times))

    def retire(self, job_id: str) -> None:
        self.jobs[job_id].retired = True

    def take_fault(self, path: str, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.kind in kinds and f.path.search(path):
                    f.times -= 1
                    return f.kind
        return None

    # --- the job model --------------------------------------------------------------------------------------------
    def state_of(self, job: Job) -> int:
        if job.retired:
            return 7
        t = self.now() - job.submitted
        if job.canceled_at is not None:
            return 6
        if job.no_steps:
            return 5
        if t < job.queue_s:
            return 1
        if t < job.queue_s + job.run_s:
            return 5 if job.error and t >= job.queue_s else 2
        if t < job.queue_s + job.run_s + job.export_s:
            return 5 if job.error else 3
        return 5 if job.error else 4

    def active_jobs(self, user: str) -> int:
        return sum(1 for j in self.jobs.values() if j.user == user and self.state_of(j) in (1, 2, 3))

    def active_interval(self, job: Job) -> tuple[float, float]:
        """Server time during which the job counted against its user's limit (waiting, running, exporting)."""
        end = job.submitted + (0 if job.no_steps else job.queue_s)
        if not job.no_steps:
            end += job.run_s if job.error is None else 0
            end += job.export_s if job.error is None else 0
        if job.canceled_at is not None:
            end = min(end, job.canceled_at)
        return job.submitted, end

    def max_simultaneous_jobs(self, user: str) -> int:
        """The most jobs this user (token) ever had active at once on this server."""
        edges = []
        for j in self.jobs.values():
            if j.user == user:
                start, end = self.active_interval(j)
                edges += [(start, 1), (end, -1)]
        peak = now = 0
        for _, delta in sorted(
            edges, key=lambda e: (e[0], e[1])
        ):  # an end before a start at the same instant
            now += delta
            peak = max(peak, now)
        return peak

    def job_json(self, job: Job) -> dict:
        state = self.state_of(job)
        waiting = sorted((j for j in self.jobs.values() if self.state_of(j) == 1), key=lambda j: j.submitted)
        pos = waiting.index(job) if job in waiting else (0 if state in (2, 3) else -1)
        ms = lambda s: int(s * 1000)  # noqa: E731
        steps = []
        if not job.no_steps:
            validation = [
                {"success": True, "message": "<b>Statistics:</b><br>Samples: ok", "type": 0, "time": 0}
            ]
            if job.error and state == 5:
                validation = [
                    {"success": False, "message": f"<b>Error:</b> {job.error}", "type": 1, "time": 0}
                ]
            steps.append({"id": 1, "name": "Input Validation", "empty": False, "logMessages": validation})
            if state == 4:
                steps.append(
                    {
                        "id": 2,
                        "name": "Quality Control",
                        "empty": False,
                        "logMessages": [{"success": True, "message": "QC ok", "type": 0, "time": 0}],
                    }
                )
        outputs = []
        if state in (4, 8):
            outputs.append(
                {
                    "id": 1,
                    "name": "output",
                    "description": "Downloads",
                    "download": True,
                    "type": "local_folder",
                    "hash": "p" * 40,
                    "jobId": job.id,
                    "autoExport": False,
                    "tree": [],
                    "files": [
                        {
                            "name": f["name"],
                            "path": f"{job.id}/output/{f['name']}",
                            "hash": h,
                            "count": f["count"],
                            "size": display_size(f["path"].stat().st_size),
                            "parameterId": 1,
                            "user": job.user,
                        }
                        for h, f in sorted(job.files.items(), key=lambda kv: kv[1]["name"])
                    ],
                }
            )
        return {
            "application": f"Genotype Imputation {job.app}",
            "applicationId": job.app,
            "id": job.id,
            "name": job.name,
            "state": state,
            "positionInQueue": pos,
            "submittedOn": ms(job.submitted),
            "startTime": ms(job.submitted + job.queue_s) if state != 1 else 0,
            "endTime": ms(job.submitted + job.queue_s + job.run_s + job.export_s) if state in (4, 5) else 0,
            "deletedOn": -1,
            "currentTime": ms(self.now()),
            "userAgent": "",
            "username": job.user,
            "logs": "",
            "workspaceSize": "",
            "steps": steps,
            "outputParams": outputs,
        }

    def submit(self, user: str, app: str, fields: dict[str, str], uploads: list[tuple[str, bytes]]) -> Job:
        created = datetime.now()
        job_id = created.strftime("job-%Y%m%d-%H%M%S-") + f"{created.microsecond // 1000:03d}"
        while job_id in self.jobs:
            job_id = job_id[:-3] + f"{(int(job_id[-3:]) + 1) % 1000:03d}"
        workdir = self.workdir / job_id
        workdir.mkdir(parents=True)
        job = Job(
            id=job_id,
            name=fields.get("job-name", job_id),
            user=user,
            app=app,
            params=fields,
            submitted=self.now(),
            queue_s=self.queue_seconds,
            run_s=self.run_seconds,
            export_s=self.export_seconds,
            workdir=workdir,
            password=fields.get("password"),
        )
        refpanel = re.sub(r"^apps@", "", fields.get("refpanel", "")).split("@")[0]
        if refpanel not in PANELS:
            job.no_steps = True  # MIS2: state 5 at once, the reason only in the admin log
        else:
            job.error = self.next_job_error or _validate(fields, uploads, refpanel, workdir)
            self.next_job_error = None
        if not job.error and not job.no_steps and fields.get("mode", "imputation") == "imputation":
            self._make_results(job, uploads)
        self.jobs[job_id] = job
        self.submissions += 1
        return job

    def _make_results(self, job: Job, uploads: list[tuple[str, bytes]]) -> None:
        password = job.password or "Generated1!pw"
        aes = "aesEncryption" in job.params
        outdir = job.workdir / "output"
        outdir.mkdir()
        for name, _ in uploads:
            src = job.workdir / "input" / Path(name).name
            chrom = _first_chrom(src)
            n = re.sub(r"^chr", "", chrom)
            dose, info = _dose_vcf(src, job.workdir / f"chr{n}.dose.vcf.gz")
            entries = {f"chr{n}.dose.vcf.gz": dose, f"chr{n}.info.gz": info}
            if self.evil_zip:
                entries["../../escaped.txt"] = b"gotcha"
            zpath = outdir / f"chr_{n}.zip"
            (write_aes if aes else write_zipcrypto)(zpath, entries, password)
        (outdir / "qc_report.txt").write_text("Input Validation: ok\n")
        (outdir / "statistics").mkdir()
        (outdir / "statistics" / "snps-excluded.txt").write_text("#Position\tFilterType\tInfo\n")
        for path in sorted(p for p in outdir.rglob("*") if p.is_file()):
            h = hashlib.sha256(f"{job.id}/{path}/{secrets.token_hex(8)}".encode()).hexdigest()
            job.files[h] = {"name": str(path.relative_to(outdir)), "path": path, "count": self.max_downloads}


def _validate(fields: dict, uploads: list[tuple[str, bytes]], refpanel: str, workdir: Path) -> str | None:
    """What IS2's input validation would fail the job with (texts from imputationserver-utils)."""
    if fields.get("phasing", "eagle") not in ("eagle", "beagle", "no_phasing"):
        return f"Phasing method '{fields['phasing']}' not supported."
    pop = fields.get("population", "off") or "off"
    if pop not in PANELS[refpanel]:
        return f"Population '{pop}' is not supported by reference panel '{refpanel}'."
    vcfs = [(n, d) for n, d in uploads if n.endswith(".vcf.gz")]
    if not vcfs:
        return "No vcf.gz input files detected."
    (workdir / "input").mkdir(exist_ok=True)
    for name, data in vcfs:
        path = workdir / "input" / Path(name).name
        path.write_bytes(data)
        try:
            with pysam.VariantFile(str(path)) as vf:
                samples = len(vf.header.samples)
        except (OSError, ValueError):
            return "The provided VCF file is malformed."
        if samples < 20:
            return "At least 20 samples must be uploaded."
        chrom = _first_chrom(path)
        build = fields.get("build", "hg19")
        if build == "hg38" and not chrom.startswith("chr"):
            return f"Your upload data contains chromosome '{chrom}'. This is not a valid hg38 encoding. Please ensure that your input data is build hg38 and chromosome is encoded as 'chr{chrom}'."
        if build == "hg19" and chrom.startswith("chr"):
            return f"Your upload data contains chromosome '{chrom}'. This is not a valid hg19 encoding. Please ensure that your input data is build hg19 and chromosome is encoded as '{chrom[3:]}'."
    return None


def _first_chrom(path: Path) -> str:
    with pysam.VariantFile(str(path)) as vf:
        for rec in vf:
            return rec.chrom
    return "0"


def _dose_vcf(src: Path, dest: Path) -> tuple[bytes, bytes]:
    """A bgzipped dose VCF (GT + DS) and a gzipped info file from the uploaded genotypes."""
    info = io.StringIO()
    info.write("SNP\tREF(0)\tALT(1)\tALT_Frq\tMAF\tAvgCall\tRsq\tGenotyped\n")
    with pysam.VariantFile(str(src)) as vf:
        header = vf.header.copy()
        header.add_line(
            '##FORMAT=<ID=DS,Number=A,Type=Float,Description="Estimated Alternate Allele Dosage">'
        )
        header.add_line(
            '##INFO=<ID=R2,Number=1,Type=Float,Description="Estimated Imputation Accuracy (R-square)">'
        )
        with pysam.VariantFile(str(dest), "wz", header=header) as out:
            for rec in vf:
                new = out.new_record(
                    contig=rec.chrom, start=rec.start, stop=rec.stop, alleles=rec.alleles, id=rec.id
                )
                new.info["R2"] = 1.0
                dosages = []
                for sample in rec.samples:
                    gt = rec.samples[sample]["GT"]
                    new.samples[sample]["GT"] = gt
                    new.samples[sample].phased = rec.samples[sample].phased
                    ds = float(sum(a for a in gt if a is not None))
                    new.samples[sample]["DS"] = ds
                    dosages.append(ds)
                out.write(new)
                frq = sum(dosages) / (2 * len(dosages)) if dosages else 0
                info.write(
                    f"{rec.chrom}:{rec.pos}:{rec.ref}:{rec.alts[0]}\t{rec.ref}\t{rec.alts[0]}\t{frq:.5f}\t"
                    f"{min(frq, 1 - frq):.5f}\t1.0\t1.0\tGenotyped\n"
                )
    return dest.read_bytes(), gzip.compress(info.getvalue().encode())


class _Handler(BaseHTTPRequestHandler):
    srv: CloudgeneServer
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body leave in one write (flushed per request): no Nagle/delayed-ACK stalls
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # quiet
        pass

    # --- helpers
    def _json(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"message": message, "success": False})

    def _user(self) -> str | None:
        token = self.headers.get("X-Auth-Token")
        if token in self.srv.revoked:
            self._json(403, {"message": "Forbidden", "_embedded": {"errors": [{"message": "Forbidden"}]}})
            return None
        for user, t in self.srv.tokens.items():
            if token is not None and secrets.compare_digest(token, t):
                return user
        self._json(401, {"message": "Unauthorized", "_embedded": {"errors": [{"message": "Unauthorized"}]}})
        return None

    def _fault(self, path: str) -> bool:
        kind = self.srv.take_fault(path, ("drop", "500", "503"))
        if kind == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        if kind in ("500", "503"):
            self._error(
                int(kind),
                "This functionality is currently under maintenance."
                if kind == "503"
                else "Internal Server Error",
            )
            return True
        return False

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # --- routes
    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        if self._fault(path):
            return
        srv = self.srv
        m = re.fullmatch(r"/share/results/([0-9a-f]{64})/(.+)", path) or re.fullmatch(
            r"/downloads/[^/]+/([0-9a-f]{64})/(.+)", path
        )
        if m:
            return self._download(m.group(1))
        if path == "/api/v2/jobs":
            user = self._user()
            if user is None:
                return
            jobs = [srv.job_json(j) for j in srv.jobs.values() if j.user == user and srv.state_of(j) != 10]
            jobs.sort(key=lambda j: -j["submittedOn"])
            page = parse_qs(url.query).get("page")
            if page:
                p = int(page[0])
                data = jobs[(p - 1) * 15 : p * 15]
            else:
                p, data = 1, jobs
            return self._json(
                200,
                {
                    "count": len(jobs),
                    "page": p,
                    "pageSize": 15,
                    "prev": None,
                    "next": None,
                    "pages": [],
                    "data": data,
                },
            )
        m = re.fullmatch(r"/api/v2/jobs/([^/]+)(/status|/cancel)?", path)
        if m:
            user = self._user()
            if user is None:
                return
            job = srv.jobs.get(m.group(1))
            if job is None:
                return self._error(404, f"Job {m.group(1)} not found.")
            if job.user != user:
                return self._error(403, "Access denied.")
            if m.group(2) == "/status":
                srv.status_requests += 1
            if m.group(2) == "/cancel" and srv.state_of(job) in (1, 2, 3):
                job.canceled_at = srv.now()
            return self._json(200, srv.job_json(job))
        self._error(404, "Not found.")

    def _download(self, h: str) -> None:
        srv = self.srv
        for job in srv.jobs.values():
            if h in job.files:
                break
        else:
            return self._error(404, "download not found.")
        entry = job.files[h]
        srv.download_gets[entry["name"]] = srv.download_gets.get(entry["name"], 0) + 1
        if entry["count"] == 0:
            return self._error(400, "number of max downloads exceeded.")
        if entry["count"] > 0:
            entry["count"] -= 1
        if job.retired:
            return self._error(404, "File not found in workspace.")
        data = entry["path"].read_bytes()
        if srv.take_fault(entry["name"], ("truncate",)):
            data = data[: len(data) // 2]
        # Like Micronaut streaming an InputStream: no Content-Length, the body ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)

    def do_POST(self) -> None:
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if self._fault(path):
            return
        m = re.fullmatch(r"/api/v2/jobs/submit/([^/]+)", path)
        if not m:
            return self._error(404, "Not found.")
        user = self._user()
        if user is None:
            return
        srv = self.srv
        if srv.maintenance:
            return self._error(503, "This functionality is currently under maintenance.")
        app = m.group(1)
        if app.split("@")[0] not in ("imputationserver2", "imputationserver", "minimac4"):
            return self._error(404, f"Application '{app}' not found.")
        ctype = self.headers.get("Content-Type", "")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
        )
        fields, uploads = {}, []
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            key = name.replace("input-", "") if name else name
            if key not in APP_FIELDS and not (key or "").endswith("-pattern"):
                return self._error(400, f"Parameter '{name}' not found.")
            filename = part.get_filename()
            if filename:
                uploads.append((filename, part.get_payload(decode=True)))
            else:
                fields[key] = part.get_payload(decode=True).decode()
        with srv._lock:
            if srv.active_jobs(user) >= srv.max_active_jobs:
                return self._error(
                    400, f"Only {srv.max_active_jobs} jobs per user can be executed simultaneously."
                )
            job = srv.submit(user, app, fields, uploads)
        self._json(
            200,
            {"success": True, "message": "Your job was successfully added to the job queue.", "id": job.id},
        )
