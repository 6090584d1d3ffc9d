"""The default train step under glibc's malloc, glibc's malloc with transparent huge pages,
the same keeping what it frees, and tcmalloc, in alternating processes.

XLA:CPU allocates and frees its buffers every step; glibc's malloc hands large ones back
to the kernel, which then faults the pages in afresh (zeroed) on the next step. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` they come back in 2 MiB pages, so about 1/512 of
the faults. ``jaxdepth.cli.MALLOC_TUNABLES`` (what ``train.py`` and ``eval.py`` set for
themselves: ``jaxdepth.cli.restart_with_huge_page_malloc``) adds no ``mmap`` and no
trimming, and ``setup_jax`` then runs the step on the main thread, whose arena keeps the
buffers; tcmalloc keeps them too. An allocator is chosen when a process starts,
so each measurement is its own process, the allocators alternating; each prints its median
step time, its page faults and system CPU time over all its steps (the first compiles), and
the last step's loss, which must be the same under all (the allocator does not change the
arithmetic).

tcmalloc is not a Python package: on Debian/Ubuntu ``apt install libtcmalloc-minimal4``;
without it the tcmalloc processes are left out. Prints a table and one JSON line. Usage:
    python bench/allocator.py [--rounds 3] [--steps 5] [--tcmalloc PATH] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from common import bench_args, machine, time_steps
from jaxdepth.cli import malloc_tunables

TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
            "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")


def allocator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tcmalloc", default=next((p for p in TCMALLOC if Path(p).is_file()), None))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def worker(args: argparse.Namespace) -> None:
    """One measurement, in this process: one JSON line on stdout."""
    from jaxdepth.config import load_config

    cfg = load_config(args.config, args.overrides)
    before = resource.getrusage(resource.RUSAGE_SELF)
    r = time_steps(cfg, args.steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**r, "page_faults": after.ru_minflt - before.ru_minflt,
                      "sys_s": round(after.ru_stime - before.ru_stime, 2)}))


def main() -> None:
    args = bench_args(__doc__, extra=allocator_args)
    if args.worker:
        return worker(args)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    base["JAXDEPTH_HUGE_PAGES"] = "0"            # the glibc and tcmalloc workers stay as started
    envs = {"glibc": base, "glibc huge pages": {**base, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
            "glibc huge pages, kept (train.py's)": {**base, "GLIBC_TUNABLES": malloc_tunables()}}
    if args.tcmalloc and Path(args.tcmalloc).is_file():
        envs["tcmalloc"] = {**base, "LD_PRELOAD": args.tcmalloc}
    else:
        print("no tcmalloc library found (libtcmalloc-minimal4, or --tcmalloc PATH): left out")

    cmd = [sys.executable, __file__, "--worker", "--config", args.config, "--steps", str(args.steps)]
    cmd += [x for o in args.overrides for x in ("--set", o)]
    runs: dict[str, list[dict]] = {name: [] for name in envs}
    for _ in range(args.rounds):
        for name, env in envs.items():
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    rows = {name: {"step_s": statistics.median(r["step_s"] for r in rs),
                   "step_s_all": [r["step_s"] for r in rs],
                   "page_faults": statistics.median(r["page_faults"] for r in rs),
                   "sys_s": statistics.median(r["sys_s"] for r in rs),
                   "last_loss": sorted({r["last_loss"] for r in rs})} for name, rs in runs.items()}
    glibc = rows["glibc"]["step_s_all"]
    ratios = {name: [t / g for t, g in zip(r["step_s_all"], glibc)] for name, r in rows.items() if name != "glibc"}
    same = len({tuple(r["last_loss"]) for r in rows.values()}) == 1
    print(f"{'allocator':<36}{'step s':>8}{'steps (each process)':>30}{'x glibc (each round)':>26}"
          f"{'page faults':>13}{'sys s':>7}")
    for name, r in rows.items():
        each = " ".join(f"{t:.3f}" for t in r["step_s_all"])
        x = " ".join(f"{v:.2f}" for v in ratios.get(name, []))
        print(f"{name:<36}{r['step_s']:>8.3f}{each:>30}{x:>26}{r['page_faults']:>13.0f}{r['sys_s']:>7.2f}")
    print(f"last losses {'identical' if same else 'DIFFER'}: {rows['glibc']['last_loss']}")
    print(json.dumps({"bench": "allocator", "machine": machine(), "tcmalloc": envs.get("tcmalloc", {}).get("LD_PRELOAD"),
                      "results": rows, "ratios": ratios, "losses_identical": same}))


if __name__ == "__main__":
    main()
