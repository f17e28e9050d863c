"""Benchmark: the built-in regenie engine against plink2 --glm (step 2) and against its arithmetic floor (step 1).

A cohort is generated once and cached under the data directory (``<cache_dir>/regenie-bench/<shape>``): a PLINK
1 BED of N samples x M variants on several chromosomes (allele frequencies 0.01-0.5, 0.2 % missing calls),
three covariates and two quantitative traits with a polygenic signal. Measured side by side in one run:

  step 2   ``genoflows-regenie --step 2 --qt --ignore-pred`` (covariates, minMAC 5) vs
           ``plink2 --glm hide-covar`` on the same variants, samples, covariates, traits, threads: wall ratio;
  step 1   ``genoflows-regenie --step 1 --qt --bsize B`` vs numpy doing only the method's unavoidable dense
           products, XᵀX and XᵀY for every block of B variants over all samples: wall ratio;
  memory   peak resident memory of each engine step (child process ru_maxrss).

Targets (issue 8): step-2 ratio <= 2, step-1 ratio <= 3, each step <= 2 GiB.

    .venv/bin/python benchmarks/regenie_engine.py            # 20,000 x 100,000 (~0.5 GB BED, cached)
    .venv/bin/python benchmarks/regenie_engine.py --small    # 2,000 x 10,000, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = (
    "import resource, sys\n"
    "from genoflows.regenie.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def generate(root: Path, n: int, m: int, n_chrom: int, seed: int = 8) -> Path:
    """Write cohort.{bed,bim,fam}, pheno.txt, covar.txt under ``root`` (temp names, renamed when complete)."""
    done = root / "COMPLETE"
    bed = root / "cohort.bed"
    if done.exists() and bed.stat().st_size == 3 + math.ceil(n / 4) * m:
        return root / "cohort"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    af = rng.uniform(0.01, 0.5, m)
    chrom = np.repeat(np.arange(1, n_chrom + 1), -(-m // n_chrom))[:m]
    causal = rng.choice(m, size=max(10, m // 500), replace=False)
    beta = np.zeros(m)
    beta[causal] = rng.normal(0, 1, causal.size)
    covar = rng.normal(size=(n, 3))
    signal = np.zeros(n)
    nbytes = math.ceil(n / 4)
    pad = nbytes * 4 - n
    code = np.array([3, 2, 0], dtype=np.uint8)  # A1 dosage 0 -> 11, 1 -> 10, 2 -> 00; missing -> 01
    t0 = time.monotonic()
    with open(root / "cohort.bed.tmp", "wb") as fh:
        fh.write(b"\x6c\x1b\x01")
        for start in range(0, m, 2000):
            p = af[start : start + 2000]
            u = rng.random((n, p.size), dtype=np.float32)
            g = (u < p * p).astype(np.uint8) + (u < p * (2 - p)).astype(np.uint8)  # HWE dosage of A1
            hit = (causal >= start) & (causal < start + p.size)
            if hit.any():
                cols = causal[hit] - start
                gc = g[:, cols].astype(float)
                signal += (gc - gc.mean(0)) / (gc.std(0) + 1e-12) @ beta[causal[hit]]
            c = code[g]
            c[rng.random((n, p.size), dtype=np.float32) < 0.002] = 1
            if pad:
                c = np.vstack([c, np.zeros((pad, p.size), dtype=np.uint8)])
            q = c.T.reshape(p.size, nbytes, 4)
            packed = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
            fh.write(np.ascontiguousarray(packed, dtype=np.uint8).tobytes())
    ids = np.arange(1, n + 1)
    with open(root / "cohort.bim.tmp", "w") as fh:
        pos = np.arange(m) * 100 + 1
        for i in range(m):
            fh.write(f"{chrom[i]}\tv{i}\t0\t{pos[i]}\tA\tG\n")
    (root / "cohort.fam.tmp").write_text("".join(f"{i} {i} 0 0 1 -9\n" for i in ids))
    h2 = 0.3
    sig = signal / (signal.std() + 1e-12) * math.sqrt(h2)
    y1 = sig + covar @ np.array([0.2, -0.1, 0.05]) + rng.normal(0, math.sqrt(1 - h2), n)
    y2 = 0.5 * sig + rng.normal(0, 1, n)
    (root / "pheno.txt.tmp").write_text(
        "FID IID Y1 Y2\n" + "".join(f"{i} {i} {a:.6g} {b:.6g}\n" for i, a, b in zip(ids, y1, y2, strict=True))
    )
    (root / "covar.txt.tmp").write_text(
        "FID IID V1 V2 V3\n" + "".join(f"{i} {i} {r[0]:.6g} {r[1]:.6g} {r[2]:.6g}\n" for i, r in zip(ids, covar, strict=True))
    )
    for name in ("cohort.bed", "cohort.bim", "cohort.fam", "pheno.txt", "covar.txt"):
        os.replace(root / f"{name}.tmp", root / name)
    done.write_text(f"{n} {m} {n_chrom} seed={seed}\n")
    print(f"generated {n} x {m} cohort in {time.monotonic() - t0:.1f} s at {root}")
    return root / "cohort"


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_engine(args: list[str]) -> tuple[float, float, float]:
    t0, c0 = time.monotonic(), child_cpu()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall, cpu = time.monotonic() - t0, child_cpu() - c0
    if proc.returncode != 0:
        sys.exit(f"engine failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    kb = int(next(ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("MAXRSS_KB")))
    return wall, cpu, kb / 1024**2


def run_plink2(pfx: Path, root: Path, out: Path, threads: int) -> tuple[float, float]:
    cmd = ["plink2", "--bfile", str(pfx), "--pheno", str(root / "pheno.txt"), "--pheno-name", "Y1,Y2",
           "--covar", str(root / "covar.txt"), "--glm", "hide-covar", "omit-ref", "--mac", "5",
           "--threads", str(threads), "--memory", "2000", "--out", str(out)]
    t0, c0 = time.monotonic(), child_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.monotonic() - t0, child_cpu() - c0
    if proc.returncode != 0:
        sys.exit(f"plink2 failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, cpu


def arithmetic_floor(n: int, m: int, bsize: int, n_traits: int, threads: int) -> tuple[float, float]:
    """numpy doing only XᵀX and XᵀY for each block of ``bsize`` variants over ``n`` samples."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, bsize))
    y = rng.standard_normal((n, n_traits))
    n_blocks = -(-m // bsize)
    with threadpool_limits(limits=threads, user_api="blas"):
        t0, c0 = time.monotonic(), time.process_time()
        for _ in range(n_blocks):
            xtx = x.T @ x
            xty = x.T @ y
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
    assert xtx.shape == (bsize, bsize) and xty.shape == (bsize, n_traits)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="2,000 samples x 10,000 variants")
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--variants", type=int, default=100_000)
    ap.add_argument("--chromosomes", type=int, default=4)
    ap.add_argument("--bsize1", type=int, default=1000, help="step-1 --bsize")
    ap.add_argument("--bsize2", type=int, default=400, help="step-2 --bsize")
    ap.add_argument("--threads", type=int, default=1, help="threads for both engines and plink2 (1: shared machine)")
    ap.add_argument("--skip-step1", action="store_true")
    ap.add_argument("--skip-step2", action="store_true")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: <GENOFLOWS_CACHE_DIR>/regenie-bench")
    args = ap.parse_args()
    if args.small:
        args.samples, args.variants = 2_000, 10_000

    from genoflows.settings import get_settings

    base = args.data_dir or Path(get_settings().cache_dir) / "regenie-bench"
    root = base / f"n{args.samples}_m{args.variants}_c{args.chromosomes}"
    pfx = generate(root, args.samples, args.variants, args.chromosomes)
    out = root / "runs"
    out.mkdir(exist_ok=True)
    common = ["--bed", str(pfx), "--phenoFile", str(root / "pheno.txt"), "--covarFile", str(root / "covar.txt"),
              "--qt", "--threads", str(args.threads)]
    print(f"cohort: {args.samples} samples x {args.variants} variants on {args.chromosomes} chromosomes; "
          f"{args.threads} threads")

    if not args.skip_step2:
        t_plink, c_plink = run_plink2(pfx, root, out / "plink2", args.threads)
        t_s2, c_s2, mem_s2 = run_engine(["--step", "2", *common, "--bsize", str(args.bsize2), "--ignore-pred",
                                         "--out", str(out / "step2")])
        rows = sum(1 for _ in open(out / "step2_Y1.regenie")) - 1
        print(f"step 2 QT : engine {t_s2:7.1f} s wall / {c_s2:7.1f} s CPU; plink2 --glm {t_plink:7.1f} s wall / "
              f"{c_plink:7.1f} s CPU; ratio wall {t_s2 / t_plink:5.2f}, CPU {c_s2 / max(c_plink, 1e-9):5.2f} (target <= 2); "
              f"{rows} variants tested; peak {mem_s2:.2f} GiB (target <= 2)")
    if not args.skip_step1:
        t_floor, c_floor = arithmetic_floor(args.samples, args.variants, args.bsize1, 2, args.threads)
        t_s1, c_s1, mem_s1 = run_engine(["--step", "1", *common, "--bsize", str(args.bsize1),
                                         "--out", str(out / "step1")])
        print(f"step 1 QT : engine {t_s1:7.1f} s wall / {c_s1:7.1f} s CPU; floor (X'X, X'Y per block) "
              f"{t_floor:7.1f} s wall / {c_floor:7.1f} s CPU; ratio wall {t_s1 / t_floor:5.2f}, CPU "
              f"{c_s1 / max(c_floor, 1e-9):5.2f} (target <= 3); peak {mem_s1:.2f} GiB (target <= 2)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

if __name__ == "__main__":
    main()
