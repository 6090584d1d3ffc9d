"""docs/quickstart.md runs as written: every command of its ```bash blocks, in order, in a
fresh folder, with a tiny model and small data (KITTI and NYUv2 fixtures at the configs'
default paths)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Callable

from test_readers import write_kitti, write_nyu

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "docs" / "quickstart.md"

# Appended to every train.py command: later --set values win.
TINY = {
    "model.san_kernels": "[3,3,3,3,3]", "model.san_path_depths": "[1]",
    "model.decoder_channels": "[4,8,8,16,16]", "model.num_scales": "2",
    "data.height": "32", "data.width": "64", "data.gen_height": "64", "data.gen_width": "96",
    "data.gen_counts": "{train: 8, val: 2, test: 2, calib: 2}", "data.frame_step": "{}",
    "data.batch_size": "2", "data.workers": "1", "eval.batch_size": "2", "eval.median_scaling": "false",
    "train.steps": "2", "train.warmup_steps": "0", "train.val_every": "2", "train.ckpt_every": "2",
    "train.log_every": "1", "quant.qat_steps": "2",
}


def commands(markdown: str) -> list[list[str]]:
    """Each command of the ```bash blocks, backslash continuations joined, split as a shell would."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                out.append(shlex.split(line))
    return out


def _entry_point(argv: list[str]) -> tuple[Callable[[list[str]], int], list[str]]:
    """The main() a ``python ...`` command runs, and its arguments (tiny for training)."""
    import eval as eval_cli
    import train as train_cli
    from jaxdepth.export.__main__ import main as export_main
    from jaxdepth.predict import main as predict_main

    assert argv[0] == "python", f"quick reference command is not a python command: {argv}"
    if argv[1] == "train.py":
        args = [str(REPO / a) if a.startswith("configs/") else a for a in argv[2:]]
        tiny = dict(TINY)
        if "--config" in args and not args[args.index("--config") + 1].endswith("default.yaml"):
            tiny["quant.qat_steps"] = "0"       # the data sets' runs check their data path only
        return train_cli.main, args + [x for k, v in tiny.items() for x in ("--set", f"{k}={v}")] + ["--no-progress"]
    if argv[1] == "eval.py":
        return eval_cli.main, argv[2:]
    modules = {"jaxdepth.export": export_main, "jaxdepth.predict": predict_main}
    assert argv[1] == "-m" and argv[2] in modules, f"quick reference command not known to the test: {argv}"
    return modules[argv[2]], argv[3:]


def test_quickstart_commands_run(tmp_path, monkeypatch):
    cmds = commands(QUICKSTART.read_text())
    assert len(cmds) >= 8
    monkeypatch.chdir(tmp_path)
    write_kitti(tmp_path / "data" / "kitti_depth", tmp_path / "data" / "kitti_raw")
    write_nyu(tmp_path / "data" / "nyu")
    for argv in cmds:
        main, args = _entry_point(argv)
        assert main(args) == 0, shlex.join(argv)
    assert (tmp_path / "runs" / "default" / "vis" / "summary.json").is_file()
    assert (tmp_path / "predictions" / "int8" / "test_00000_depth.png").is_file()
    assert (tmp_path / "runs" / "kitti_small" / "vis" / "error_by_depth.png").is_file()
    assert (tmp_path / "runs" / "nyu" / "test_metrics.json").is_file()
