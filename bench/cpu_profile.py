"""Where a train step's CPU time goes: the step of ``bench/torch_reference.py``'s network
run in a loop, in jaxdepth or in PyTorch, sampled by Linux ``perf`` and sorted by the
code each sample fell in.

A worker process (``bench/step_worker.py``) runs the steps, by default jaxdepth under
``train.py``'s malloc setting (``jaxdepth.cli.restart_with_huge_page_malloc``: huge pages,
freed memory kept) and PyTorch on glibc's malloc as it comes, which measured no slower for
it (``--malloc`` chooses; ``docs/speed.md``); after two warm-up steps this process samples
it with ``perf record`` at 499 Hz for ``--seconds``. oneDNN is told to name its generated
kernels (``ONEDNN_JIT_PROFILE=2``, a ``/tmp/perf-<pid>.map`` perf reads): XLA:CPU's Eigen
convolutions multiply through oneDNN's GEMM kernels, PyTorch's convolutions are oneDNN's
own. Code generated without a name is XLA's compiled loops (its fusions: transposes,
elementwise, reductions). Each category's CPU seconds per step are its samples / 499 Hz
over the steps finished while sampling; the step time is the sampling window over those
steps.

Needs ``perf`` (Debian: ``linux-perf``) and the right to sample the worker
(``/proc/sys/kernel/perf_event_paranoid`` <= 1, or root); PyTorch needs the ``bench``
extra. Usage:
    python bench/cpu_profile.py [--framework jaxdepth|pytorch] [--shape 192x640x2]
        [--variant rgb|san] [--malloc as-run|glibc|huge-pages] [--seconds 20]
        [--config configs/default.yaml] [--set k=v ...]
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import step_worker

HZ = 499


def category(dso: str, sym: str) -> str:
    """The kind of code a sample of ``perf report --sort dso,sym`` fell in."""
    if dso.startswith("[JIT]"):
        if sym.startswith("jit_"):
            return "oneDNN GEMM kernels" if "gemm" in sym else "oneDNN convolution and other kernels"
        return "unnamed generated code (XLA's compiled loops)"
    if dso == "libjax_common.so":
        if "gemm_pack" in sym or "Pack2DPatches" in sym:
            return "Eigen patch packing (convolutions)"
        return "YNNPACK" if "ynn::" in sym else "XLA runtime, Eigen, oneDNN other"
    if dso == "libtorch_cpu.so":
        return "oneDNN convolution and other kernels" if "dnnl" in sym else "PyTorch ops"
    if dso.startswith("libgomp"):
        return "OpenMP runtime (PyTorch's threads waiting)"
    if dso == "[kernel.kallsyms]":
        return "kernel: zeroing fresh pages" if "clear_page" in sym else "kernel: other"
    if dso.startswith("libc.so"):
        return "libc (malloc, memcpy)"
    return "other"


def profile(args: argparse.Namespace) -> dict:
    """Samples a worker for ``args.seconds``; CPU seconds per step by category."""
    perf = shutil.which("perf")
    if perf is None:
        sys.exit("cpu_profile: `perf` is not on PATH (Debian: apt install linux-perf)")
    proc = step_worker.spawn(args.framework, args.shape, args.variant, args.malloc, args.config, args.overrides,
                             serve=False, env={"ONEDNN_JIT_PROFILE": "2"})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "perf.data")
            t0 = time.time()
            rec = subprocess.run([perf, "record", "-q", "-F", str(HZ), "-p", str(proc.pid), "-o", data,
                                  "--", "sleep", str(args.seconds)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            t1 = time.time()
            if rec.returncode != 0:
                sys.exit(f"cpu_profile: perf record failed:\n{rec.stderr}")
            report = subprocess.run([perf, "report", "-i", data, "--stdio", "--no-children", "-n", "-g", "none",
                                     "--sort", "dso,sym"], check=True, capture_output=True, text=True).stdout
    finally:
        proc.kill()
        Path(f"/tmp/perf-{proc.pid}.map").unlink(missing_ok=True)   # oneDNN's kernel names
    ends = [float(v) for v in proc.communicate()[0].split()]
    steps = sum(t0 <= t <= t1 for t in ends)
    if steps == 0:
        sys.exit(f"cpu_profile: no step finished in {args.seconds} s; sample longer")
    samples: Counter = Counter()
    for line in report.splitlines():
        parts = line.split()
        # "  12.34%  567  libfoo.so  [.] symbol ..."
        marks = [i for i, p in enumerate(parts) if p in ("[.]", "[k]")]
        if len(parts) >= 4 and parts[0].endswith("%") and parts[1].isdigit() and marks:
            dso, sym = " ".join(parts[2:marks[0]]), " ".join(parts[marks[0] + 1:])
            samples[category(dso, sym)] += int(parts[1])
    total = sum(samples.values())
    return {"framework": args.framework, "shape": args.shape, "variant": args.variant, "malloc": args.malloc,
            "steps": steps, "step_s": round((t1 - t0) / steps, 3),
            "cpu_s_per_step": round(total / HZ / steps, 3),
            "categories": {k: {"cpu_s_per_step": round(n / HZ / steps, 3), "share": round(n / total, 3)}
                           for k, n in samples.most_common()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=["jaxdepth", "pytorch"], default="jaxdepth")
    parser.add_argument("--shape", default="192x640x2", metavar="HxWxB")
    parser.add_argument("--variant", choices=["rgb", "san"], default="rgb")
    parser.add_argument("--malloc", choices=step_worker.MALLOC, default="as-run",
                        help="as-run: train.py's setting for jaxdepth, glibc's as it comes for PyTorch; "
                             "huge-pages: train.py's setting (jaxdepth.cli.MALLOC_TUNABLES) for either")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    r = profile(args)
    print(f"{r['framework']} {r['variant']} {r['shape']} ({r['malloc']} malloc): {r['steps']} steps sampled, "
          f"{r['step_s']:.3f} s per step, {r['cpu_s_per_step']:.3f} CPU s per step")
    print(f"{'where':<45}{'CPU s/step':>11}{'share':>8}")
    for name, c in r["categories"].items():
        print(f"{name:<45}{c['cpu_s_per_step']:>11.3f}{c['share']:>8.1%}")
    print(json.dumps({"bench": "cpu_profile", "hz": HZ, **r}))


if __name__ == "__main__":
    main()
