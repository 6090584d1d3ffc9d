"""Process setup shared by the command lines."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

# glibc's malloc on transparent huge pages, keeping what it frees: no block of its own mmap
# (which free unmaps) and no trimming of the heaps' tops.
MALLOC_TUNABLES = {"glibc.malloc.hugetlb": "1", "glibc.malloc.mmap_max": "0",
                   "glibc.malloc.trim_threshold": str(64 << 30)}
KEEP_FREED = f"glibc.malloc.mmap_max={MALLOC_TUNABLES['glibc.malloc.mmap_max']}"
# XLA:CPU hands convolutions, dots and reductions to YNNPACK; this keeps the dots and
# reductions there and leaves the convolutions to XLA's own Eigen kernels.
EIGEN_CONVOLUTIONS = ("--xla_cpu_experimental_ynn_fusion_type="
                      "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE")


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Options of a multi-host run: one process per host, all with the same command."""
    group = parser.add_argument_group("multi-host (one process per host; see README)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0, reachable from every host")
    group.add_argument("--num-processes", type=int, default=None, metavar="N", help="number of hosts")
    group.add_argument("--process-id", type=int, default=None, metavar="I", help="this host's index, 0..N-1")


def setup_jax(args: argparse.Namespace | None = None) -> None:
    """XLA:CPU's convolutions on Eigen, the persistent compilation cache (repeat runs compile
    in ~1 s instead of ~10 s) and, when ``--coordinator`` is given, ``jax.distributed``.
    Call it before any other JAX call: XLA reads its flags when the first backend starts.

    With Eigen's convolutions the default run took 0.79x the wall time of XLA's own default
    (YNNPACK's) on a 2-core AMD EPYC with AVX2, and the train step 0.67-0.70x in separate
    processes (``docs/speed.md``, "Eigen's convolutions in separate processes").
    An ``XLA_FLAGS`` that sets ``xla_cpu_experimental_ynn_fusion_type`` itself is kept.

    Under the malloc of ``restart_with_huge_page_malloc``, XLA:CPU runs each program on the
    calling thread (no asynchronous dispatch): a step's buffers are then allocated in the
    main thread's arena, the one that keeps them from step to step.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    import jax

    if KEEP_FREED in os.environ.get("GLIBC_TUNABLES", ""):
        jax.config.update("jax_cpu_enable_async_dispatch", False)

    if args is not None and getattr(args, "coordinator", None):
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "jaxdepth" / "xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def malloc_tunables(existing: str = "") -> str:
    """``GLIBC_TUNABLES`` with ``MALLOC_TUNABLES`` added after ``existing``, each one the
    user has not set already."""
    ours = [f"{k}={v}" for k, v in MALLOC_TUNABLES.items() if f"{k}=" not in existing]
    return ":".join(filter(None, [existing, *ours]))


def restart_with_huge_page_malloc() -> None:
    """Runs this command again, once, in a fresh process whose glibc ``malloc`` asks for
    transparent huge pages and keeps the memory it frees (``MALLOC_TUNABLES`` in
    ``GLIBC_TUNABLES``, which glibc reads only at process start).

    XLA:CPU allocates and frees its large buffers every step; glibc returns them to the
    kernel, which faults them back in 4 KiB pages, zeroed: about 150,000 page faults per
    default train step. In 2 MiB pages there are about 5,000, and the step took 0.90x the
    time with the same arithmetic (``docs/speed.md``, "Memory allocator"). Kept instead of
    returned (and the step run on the main thread, ``setup_jax``), they are not faulted in
    again: the step took 0.87-0.96x its time on huge pages alone (2026-12-07). Nothing
    happens off glibc, where the huge-page tunable is set already, or with
    ``JAXDEPTH_HUGE_PAGES=0``; a tunable already set keeps its value.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (platform.libc_ver()[0] != "glibc" or "glibc.malloc.hugetlb" in tunables
            or os.environ.get("JAXDEPTH_HUGE_PAGES") == "0"):
        return
    env = {**os.environ, "GLIBC_TUNABLES": malloc_tunables(tunables)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
