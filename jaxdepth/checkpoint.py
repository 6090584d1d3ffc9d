"""Checkpoints: orbax managers for the last N and the best-by-validation states.

A run folder holds ``checkpoints/last/<step>`` and ``checkpoints/best_<phase>/<step>``; each
step folder holds ``state`` (params, batch stats, quantization ranges, optimizer state,
step) and ``meta`` (JSON: the full config, phase and metrics), so one step folder is
enough to rebuild and evaluate the model. Each ``last`` step folder also holds
``sha256.json``, the digest of every file in it: orbax writes atomically (a killed save
leaves no step folder) but does not notice damaged data, which then restores silently.

In a multi-host run every process calls every method (orbax coordinates the writes);
process 0 writes the digests.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

LAST = "last"
CHECKSUMS = "sha256.json"


class CheckpointError(RuntimeError):
    """No checkpoint of a run folder can be read; the message names each and why."""


def _unreadable(path: Path, error: Exception) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    return f"checkpoint {path} is unreadable ({type(error).__name__}: {first_line})"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(step_dir: Path) -> None:
    """Records the digest of every file of a finished step folder (atomically)."""
    files = {str(p.relative_to(step_dir)): _digest(p)
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    tmp = step_dir / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(files, indent=0))
    os.replace(tmp, step_dir / CHECKSUMS)


def verify_checksums(step_dir: Path) -> None:
    """Raises CheckpointError naming the first missing or altered file; a step folder
    without digests (killed before they were written) is not checked."""
    record = step_dir / CHECKSUMS
    if not record.is_file():
        return
    for rel, digest in json.loads(record.read_text()).items():
        path = step_dir / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if _digest(path) != digest:
            raise CheckpointError(f"{path} does not match its recorded sha256 (corrupted)")


def _args(state: Any, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))


def _restore_args(template: Any) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())


def _options(**kwargs: Any) -> ocp.CheckpointManagerOptions:
    """Synchronous saves: the loop waits for every save anyway, and in a multi-host run the
    collectives of a background save could interleave with the next manager's and hang."""
    return ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False, **kwargs)


class Checkpoints:
    """``last``: the latest ``keep`` states (for resuming). ``best_<phase>``: the state with
    the lowest validation abs_rel of each phase (fp32, qat). Named single states (``fp32``:
    the end of the FP32 phase with its PTQ ranges) sit beside them."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.root = Path(run_dir).absolute() / "checkpoints"
        self.last = ocp.CheckpointManager(self.root / LAST, options=_options(max_to_keep=keep))
        self._managers: dict[str, ocp.CheckpointManager] = {}

    def _manager(self, name: str, best: bool) -> ocp.CheckpointManager:
        if name not in self._managers:
            opts = _options(max_to_keep=1)
            if best:
                opts = _options(max_to_keep=1, best_fn=lambda m: m["abs_rel"], best_mode="min")
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
        if jax.process_index() == 0:
            write_checksums(self.root / LAST / str(step))

    def save_named(self, name: str, step: int, state: Any, meta: dict) -> None:
        """Saves a single named state; a resumed run that reaches the same step again
        replaces the one written before the interruption."""
        mgr = self._manager(name, best=False)
        if step in mgr.all_steps():
            mgr.delete(step)
        mgr.save(step, args=_args(state, meta), force=True)
        self.wait()

    def restore_named(self, name: str, template: Any) -> tuple[Any, dict]:
        mgr = self._manager(name, best=False)
        out = mgr.restore(mgr.latest_step(), args=_restore_args(template))
        return out["state"], out["meta"]

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def latest_meta(self) -> tuple[dict, int, list[str]] | None:
        """(meta, step, messages) of the newest ``last`` checkpoint whose meta reads;
        the messages name the newer ones that did not. None without any checkpoint."""
        skipped = []
        for step in sorted(self.last.all_steps(), reverse=True):
            try:
                meta = self.last.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                return meta["meta"], step, skipped
            except Exception as e:  # any failure to read means the checkpoint is unusable
                skipped.append(_unreadable(self.root / LAST / str(step), e))
        if skipped:
            raise CheckpointError("no readable checkpoint: " + "; ".join(skipped))
        return None

    def restore_latest(self, template: Any) -> tuple[Any, dict, list[str]]:
        """(state, meta, messages) of the newest ``last`` checkpoint that restores.

        A truncated or corrupted checkpoint (killed mid-write by something orbax cannot
        guard against, a damaged disk) is deleted and the previous one is used; the
        messages say which were skipped and why.
        """
        skipped = []
        for step in sorted(self.last.all_steps(), reverse=True):
            try:
                verify_checksums(self.root / LAST / str(step))
                out = self.last.restore(step, args=_restore_args(template))
            except Exception as e:  # any failure to read means the checkpoint is unusable
                skipped.append(_unreadable(self.root / LAST / str(step), e) + "; deleted")
                self.last.delete(step)
                continue
            return out["state"], out["meta"], skipped
        raise CheckpointError("no readable checkpoint: " + "; ".join(skipped))

    def discard_after(self, step: int) -> None:
        """Deletes every checkpoint newer than ``step``, the state a run resumes from: the
        resumed run writes them again and orbax does not overwrite a step."""
        for name in sorted(p.name for p in self.root.iterdir() if p.is_dir()):
            mgr = self.last if name == LAST else self._manager(name, best=name.startswith("best_"))
            for s in mgr.all_steps():
                if s > step:
                    mgr.delete(s)

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
    """Restores (state as a plain pytree, meta, step folder) without a template; a step
    folder whose files do not match their digests is a CheckpointError."""
    step_dir = resolve(path)
    verify_checksums(step_dir)
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
