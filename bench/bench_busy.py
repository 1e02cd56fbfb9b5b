"""Wall time of the default chain (or any command) on an idle machine and beside N CPU-bound
processes (`python -c 'while True: pass'`, started before and stopped after each run).

Without a command, each run is `kedro run --env=ENV` in a fresh temporary copy of the project
(so that nothing resumes and nothing is written into data/ or mlflow.db); with --nproc N,
`torchrun --standalone --nproc_per_node=N -m kedro run --env=ENV` there. The environment is
inherited: unset OMP_NUM_THREADS and OMP_WAIT_POLICY to measure the defaults.

    python bench/bench_busy.py [--loads 0 2] [--env base] [--params KEY=VALUE,...] [--nproc 2]
    python bench/bench_busy.py --loads 0 2 -- python bench/bench_train.py --preset nano ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from project_copy import copy_project

LOAD = [sys.executable, "-c", "while True: pass"]


def timed(command: list[str], cwd: Path, loads: int, quiet: bool) -> float:
    """Seconds ``command`` takes in ``cwd`` beside ``loads`` busy loops; fails if it fails."""
    busy = [subprocess.Popen(LOAD) for _ in range(loads)]
    try:
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL if quiet else None)
        return time.perf_counter() - start
    finally:
        for process in busy:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--env", default="base")
    parser.add_argument("--params", default=None, help="kedro run --params, e.g. a smaller run")
    parser.add_argument("--nproc", type=int, default=1, help="N > 1: under torchrun, N processes")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ... instead of kedro")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    times = {}
    for loads in args.loads:
        with tempfile.TemporaryDirectory() as tmp:
            if command:
                cwd, run = Path.cwd(), command
            else:
                cwd = copy_project(Path(tmp) / "project")
                bin_dir = Path(sys.executable).parent
                kedro = [str(bin_dir / "kedro")]
                if args.nproc > 1:
                    torchrun = [str(bin_dir / "torchrun"), "--standalone"]
                    kedro = [*torchrun, f"--nproc_per_node={args.nproc}", "-m", "kedro"]
                params = [f"--params={args.params}"] if args.params else []
                run = [*kedro, "run", f"--env={args.env}", *params]
            times[loads] = timed(run, cwd, loads, quiet=not command)
        ratio = f"  ({times[loads] / times[args.loads[0]]:.2f}x)" if len(times) > 1 else ""
        print(f"{loads} busy processes: {times[loads]:7.1f} s{ratio}", flush=True)
    print(f"command: {' '.join(run)}")


if __name__ == "__main__":
    main()
