"""Run fuzz targets for N inputs each (a subprocess per target: libFuzzer exits when it
is done) and sum up what each did: inputs, seconds, inputs/s, coverage, crashes."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("virtqueue", "mmio", "virtio_blk", "virtio_net", "vsock", "virtio_rng", "uart",
           "i8042", "mmds_stack", "mmds_http")

_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")
_CRASH = re.compile(r"Test unit written to (\S+)")


@dataclasses.dataclass
class Result:
    target: str
    runs: int = 0
    seconds: float = 0.0      # fuzzing only (from libFuzzer's INITED line)
    wall: float = 0.0         # with interpreter start, imports and set-up
    cov: int = 0
    ft: int = 0
    returncode: int = 0
    crash: str | None = None
    tail: str = ""

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.crash is None


def run_target(target: str, runs: int, *, artifacts: Path, corpus: Path | None = None,
               timeout: int = 10, seed: int = 0, extra=()) -> Result:
    """One target for `runs` inputs; crashing inputs land in `artifacts`."""
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        cmd = [sys.executable, "-m", f"fuzz.{target}", f"-runs={runs}", f"-timeout={timeout}",
               f"-seed={seed}", "-rss_limit_mb=2048", "-print_final_stats=1",
               f"-artifact_prefix={artifacts}/{target}-", *extra, str(corpus or tmp)]
        if corpus is not None:
            corpus.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        lines, inited = [], None
        with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as proc:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if inited is None and " INITED " in line:   # imports and set-up done
                    inited = time.monotonic()
        end = time.monotonic()
    res = Result(target, returncode=proc.returncode, wall=end - start,
                 seconds=end - (inited or start))
    for line in lines:
        if m := _STAT.match(line):
            res.runs, res.cov, res.ft = int(m[1]), int(m[2]), int(m[3])
        elif m := _CRASH.search(line):
            res.crash = m[1]
        elif line.startswith("stat::number_of_executed_units:"):
            res.runs = int(line.split(":")[-1])
        elif m := _DONE.match(line):
            res.runs = int(m[1])
    res.tail = "\n".join(lines[-40:])
    return res


def run_all(targets, runs: int, *, jobs: int = 1, artifacts: Path | None = None,
            corpus_root: Path | None = None, timeout: int = 10, seed: int = 0,
            on_result=None) -> list[Result]:
    artifacts = artifacts or ROOT / "fuzz" / "artifacts"

    def one(t):
        corpus = corpus_root / t if corpus_root is not None else None
        r = run_target(t, runs, artifacts=artifacts, corpus=corpus, timeout=timeout, seed=seed)
        if on_result is not None:
            on_result(r)
        return r
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        return list(ex.map(one, targets))


HEADER = (f"{'target':<12} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'cov':>6} "
          f"{'ft':>7}  result")


def row(r: Result) -> str:
    status = "ok" if r.ok else (f"CRASH {r.crash}" if r.crash else f"exit {r.returncode}")
    return (f"{r.target:<12} {r.runs:>10} {r.seconds:>8.1f} {r.rate:>9.0f} {r.cov:>6} "
            f"{r.ft:>7}  {status}")


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    ap.add_argument("targets", nargs="*", default=list(TARGETS), metavar="TARGET",
                    help=f"default: all of {', '.join(TARGETS)}")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("FUZZ_RUNS", 10000)),
                    help="inputs per target (default $FUZZ_RUNS or 10000)")
    ap.add_argument("--jobs", type=int, default=1, help="targets run at once (default 1)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    ap.add_argument("--seed", type=int, default=0, help="libFuzzer seed (0: random)")
    ap.add_argument("--corpus", type=Path, help="keep each target's corpus in DIR/<target>")
    ap.add_argument("--artifacts", type=Path, help="where crashing inputs go "
                    "(default fuzz/artifacts)")
    args = ap.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    print(HEADER, flush=True)
    results = run_all(args.targets, args.runs, jobs=args.jobs, artifacts=args.artifacts,
                      corpus_root=args.corpus, timeout=args.timeout, seed=args.seed,
                      on_result=lambda r: print(row(r), flush=True))
    bad = [r for r in results if not r.ok]
    for r in bad:
        print(f"\n--- {r.target} ---\n{r.tail}", file=sys.stderr)
    return 1 if bad else 0
