"""Process setup shared by the command lines."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Options of a multi-host run: one process per host, all with the same command."""
    group = parser.add_argument_group("multi-host (one process per host; see README)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0, reachable from every host")
    group.add_argument("--num-processes", type=int, default=None, metavar="N", help="number of hosts")
    group.add_argument("--process-id", type=int, default=None, metavar="I", help="this host's index, 0..N-1")


def setup_jax(args: argparse.Namespace | None = None) -> None:
    """Persistent compilation cache (repeat runs compile in ~1 s instead of ~10 s) and,
    when ``--coordinator`` is given, ``jax.distributed`` (before any other JAX call)."""
    import jax

    if args is not None and getattr(args, "coordinator", None):
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "jaxdepth" / "xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
