"""Checkpoints: orbax managers for the last N and the best-by-validation states.

A run folder holds ``checkpoints/last/<step>`` and ``checkpoints/best_<phase>/<step>``; each
step folder holds ``state`` (params, batch stats, quantization ranges, optimizer state,
step) and ``meta`` (JSON: the full config, phase and metrics), so one step folder is
enough to rebuild and evaluate the model.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

LAST = "last"


def _args(state: Any, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))


def _restore_args(template: Any) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())


class Checkpoints:
    """``last``: the latest ``keep`` states (for resuming). ``best_<phase>``: the state with
    the lowest validation abs_rel of each phase (fp32, qat). Named single states (``fp32``:
    the end of the FP32 phase with its PTQ ranges) sit beside them."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.root = Path(run_dir).absolute() / "checkpoints"
        self.last = ocp.CheckpointManager(
            self.root / LAST, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self._managers: dict[str, ocp.CheckpointManager] = {}

    def _manager(self, name: str, best: bool) -> ocp.CheckpointManager:
        if name not in self._managers:
            opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
            if best:
                opts = ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, best_fn=lambda m: m["abs_rel"], best_mode="min")
            self._managers[name] = ocp.CheckpointManager(self.root / name, options=opts)
        return self._managers[name]

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None,
             best_key: str | None = None) -> None:
        self.last.save(step, args=_args(state, meta), force=True)
        if metrics is not None and best_key is not None:
            self._manager(f"best_{best_key}", best=True).save(
                step, args=_args(state, meta), metrics={"abs_rel": float(metrics["abs_rel"])},
                force=True)
        self.wait()

    def save_named(self, name: str, step: int, state: Any, meta: dict) -> None:
        self._manager(name, best=False).save(step, args=_args(state, meta), force=True)
        self.wait()

    def restore_named(self, name: str, template: Any) -> tuple[Any, dict]:
        mgr = self._manager(name, best=False)
        out = mgr.restore(mgr.latest_step(), args=_restore_args(template))
        return out["state"], out["meta"]

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def restore_latest(self, template: Any) -> tuple[Any, dict]:
        out = self.last.restore(self.last.latest_step(), args=_restore_args(template))
        return out["state"], out["meta"]

    def wait(self) -> None:
        self.last.wait_until_finished()
        for m in self._managers.values():
            m.wait_until_finished()


def resolve(path: str | Path) -> Path:
    """A run folder, a manager folder (``.../best``) or a step folder -> the step folder.

    A run folder resolves to the best checkpoint of its last phase (QAT, then FP32),
    else to its latest checkpoint.
    """
    path = Path(path).absolute()
    if (path / "state").is_dir() and (path / "meta").is_dir():
        return path
    if (path / "checkpoints").is_dir():
        for sub in ("best_qat", "best_fp32", LAST):
            try:
                return resolve(path / "checkpoints" / sub)
            except FileNotFoundError:
                continue
    steps = sorted((p for p in path.glob("[0-9]*") if p.is_dir() and (p / "state").is_dir()),
                   key=lambda p: int(p.name)) if path.is_dir() else []
    if steps:
        return steps[-1]
    raise FileNotFoundError(f"no checkpoint found at {path} (expected a run folder, "
                            "checkpoints/best, checkpoints/last or a step folder)")


def load(path: str | Path) -> tuple[dict, dict, Path]:
    """Restores (state as a plain pytree, meta, step folder) without a template."""
    step_dir = resolve(path)
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    out = ckptr.restore(step_dir, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"], step_dir


def has_ranges(variables: dict) -> bool:
    """Whether the activation observers of the inference graph hold calibrated or QAT
    ranges (the training-only heads at scales 1..3 are not part of it)."""
    counts = [x for path, x in _flatten(variables.get("quant", {}))
              if path.endswith("count") and not re.search(r"decoder/head[1-9]", path)]
    return bool(counts) and all(int(c) > 0 for c in counts)


def _flatten(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v
