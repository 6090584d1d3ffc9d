import pytest

from jaxdepth.config import Config, ConfigError, config_from_dict, load_config, save_config, to_dict


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.steps=7", "model.san_kernels=[3,3,3,3,3]", "train.lr=0.5"])
    assert cfg.train.steps == 7
    assert cfg.model.san_kernels == (3, 3, 3, 3, 3)
    assert cfg.train.lr == 0.5
    assert cfg.model.encoder == Config().model.encoder


def test_int_widens_to_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "train.stepz"),
    ("trian.steps=3", "trian"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("model.sparse=3", "model.sparse"),
    ("model.san_kernels=5", "model.san_kernels"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  grad_clipp: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.grad_clipp"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_save_load_round_trip(tmp_path):
    cfg = load_config(None, ["data.gen_counts={train: 3, val: 1}", "quant.qat_steps=5"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(to_dict(cfg)) == cfg


def test_shipped_configs_load():
    from pathlib import Path
    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("quant.preset=npu", r"quant\.preset: 'npu' is not one of npu_strict, per_channel, symmetric"),
    ("model.encoding=lg", r"model\.encoding: 'lg' is not one of intfrac, inverse, log"),
    ("model.encoder=resnet50", r"model\.encoder: 'resnet50' is not one of resnet18, resnet34"),
    ("model.num_scales=6", r"model\.num_scales: 6 .*in 1\.\.5"),
    ("model.num_scales=0", r"model\.num_scales: 0 .*in 1\.\.5"),
    ("data.height=100", r"data\.height: 100 .*multiple of 32"),
    ("data.width=0", r"data\.width: 0 .*multiple of 32"),
    ("data.batch_size=0", r"data\.batch_size: 0 .*>= 1"),
    ("train.lr=-0.1", r"train\.lr: -0\.1 .*> 0"),
    ("train.warmup_steps=-1", r"train\.warmup_steps: -1 .*>= 0"),
    ("train.lr_boundaries=[0.9,0.5]", r"train\.lr_boundaries: \[0\.9, 0\.5\] .*increasing fractions"),
    ("data.hflip=1.5", r"data\.hflip: 1\.5 .*\[0, 1\]"),
    ("train.mono_weight=-1", r"train\.mono_weight: -1\.0 .*>= 0"),
    ("quant.ema_decay=1", r"quant\.ema_decay: 1\.0 .*\[0, 1\)"),
    ("model.san_kernels=[3,3,3,3]", r"model\.san_kernels: \[3, 3, 3, 3\] .*5 odd kernel sizes"),
    ("model.max_depth=0.2", r"model\.max_depth: 0\.2 .*> model\.min_depth"),
    ("train.keep=0", r"train\.keep: 0 .*>= 1"),
    ("model.activation_cap=-3", r"model\.activation_cap: -3\.0 .*>= 0 \(0: none\)"),
    ("model.correction_phases=0", r"model\.correction_phases: 0 .*>= 1"),
    ("model.san_stage0_path_depths=[1,0]", r"model\.san_stage0_path_depths: \[1, 0\] .*depths >= 1"),
])
def test_bad_values_name_the_key_and_the_allowed_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_train_cli_config_error_exits_2_before_any_work(tmp_path, capsys):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1]))
    import train as train_cli

    run = tmp_path / "run"
    code = train_cli.main(["--set", "quant.preset=npu_strikt", "--set", f"train.run_dir={run}",
                           "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "quant.preset: 'npu_strikt' is not one of npu_strict" in err
    assert "Traceback" not in err
    assert not run.exists()


def test_config_diff_lists_old_and_new_values_except_runtime_keys():
    from jaxdepth.config import config_diff

    old = load_config(None, ["train.lr=0.001"])
    new = load_config(None, ["train.lr=0.002", "model.san_kernels=[3,3,3,3,3]", "data.workers=7",
                             "train.run_dir=elsewhere"])
    assert config_diff(old, new) == {"model.san_kernels": ([5, 5, 3, 3, 3], [3, 3, 3, 3, 3]),
                                     "train.lr": (0.001, 0.002)}


def test_relative_data_root_is_stored_absolute(tmp_path, monkeypatch):
    from jaxdepth.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(load_config(None, ["data.root=data/x"]))
    assert cfg.data.root == str(tmp_path / "data" / "x")
    assert absolute_paths(cfg) is cfg


def test_missing_split_is_an_error_before_any_work(tiny_data, tmp_path):
    from conftest import tiny_cfg
    from jaxdepth.trainer import Trainer

    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"eval\.split: split 'tset' is not in data\.root .* "
                                          r"\(it has: calib, test, train, val\)"):
        Trainer(tiny_cfg(tiny_data, run, eval__split="tset"), progress=False)
    with pytest.raises(ConfigError, match=r"eval\.split: split 'tset' is not in data\.gen_counts "
                                          r"\(it has: train, val\)"):
        Trainer(tiny_cfg(tmp_path / "to_render", run, eval__split="tset", data__generate=True,
                         data__gen_counts="{train: 4, val: 2, test: 0}"), progress=False)
    assert not run.exists() and not (tmp_path / "to_render").exists()


def test_batch_that_does_not_split_over_the_devices_is_an_error(tiny_data, tmp_path, monkeypatch):
    import jax
    from conftest import tiny_cfg
    from jaxdepth.trainer import Trainer

    monkeypatch.setattr(jax, "device_count", lambda: 4)
    with pytest.raises(ConfigError, match=r"data\.batch_size: 2 does not split over the 4 devices "
                                          r"of this run; choose a multiple of 4"):
        Trainer(tiny_cfg(tiny_data, tmp_path / "run", data__batch_size=2), progress=False)
    assert not (tmp_path / "run").exists()
