"""A process of its own for the train step of ``bench/torch_reference.py``'s network, in
jaxdepth or in PyTorch, so that each framework has its own heap, its own threads and its
own malloc setting, as in use.

``--malloc``: ``as-run`` gives jaxdepth ``train.py``'s setting
(``jaxdepth.cli.restart_with_huge_page_malloc``: huge pages, freed memory kept) and PyTorch
glibc's malloc as it comes, which measured no slower for it (``docs/speed.md``);
``huge-pages`` gives either ``train.py``'s setting, ``glibc`` either glibc's as it comes.
The worker builds the step, runs it twice (compilation, warm-up) and prints ``ready``;
then, with ``--serve``, it runs one step per line read from stdin and prints its seconds,
and without, it steps until killed and prints the wall-clock end of each step.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

MALLOC = ("as-run", "glibc", "huge-pages")


def spawn(framework: str, shape: str, variant: str, malloc: str, config: str, overrides: list[str],
          serve: bool, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A worker started and past its warm-up steps."""
    cmd = [sys.executable, os.path.abspath(__file__), "--framework", framework, "--shape", shape,
           "--variant", variant, "--malloc", malloc, "--config", config]
    cmd += [a for o in overrides for a in ("--set", o)] + (["--serve"] if serve else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if serve else None, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        sys.exit(f"step_worker: the {framework} worker ({shape}, {variant}) ended before its first steps")
    return proc


def step_seconds(proc: subprocess.Popen) -> float:
    """One step of a ``serve`` worker."""
    proc.stdin.write("step\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=["jaxdepth", "pytorch"], required=True)
    parser.add_argument("--shape", required=True, metavar="HxWxB")
    parser.add_argument("--variant", choices=["rgb", "san"], required=True)
    parser.add_argument("--malloc", choices=MALLOC, default="as-run")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    from common import random_batch, reference_config, train_step_runner
    from jaxdepth.cli import restart_with_huge_page_malloc, setup_jax

    if args.malloc == "huge-pages" or (args.malloc == "as-run" and args.framework == "jaxdepth"):
        restart_with_huge_page_malloc()
    cfg = reference_config(args.config, args.overrides, args.shape, args.variant)
    if args.framework == "jaxdepth":
        setup_jax()
        run = train_step_runner(cfg)[0]
    else:
        import torch
        from torch_reference import THREADS, torch_step
        torch.set_num_threads(THREADS)
        torch.set_num_interop_threads(1)
        run = torch_step(cfg, random_batch(cfg.data))
    run()
    run()
    print("ready", flush=True)
    if args.serve:
        for _ in sys.stdin:
            t0 = time.perf_counter()
            run()
            print(time.perf_counter() - t0, flush=True)
        return
    while True:
        run()
        print(time.time(), flush=True)


if __name__ == "__main__":
    main()
