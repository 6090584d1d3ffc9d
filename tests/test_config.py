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
