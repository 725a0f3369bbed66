import subprocess
import sys

import pytest
import yaml

from arm.config import ConfigError, load_config


def test_every_preset_resolves():
    sizes = {p: load_config(preset=p).data.sources[0].n_scenes for p in ["micro", "tiny", "small", "7b"]}
    assert sizes["micro"] < sizes["tiny"] < sizes["small"] < sizes["7b"]


def test_unknown_key_names_its_path(tmp_path):
    raw = yaml.safe_load(open("params.yaml"))
    raw["data"]["filters"]["min_sied"] = 3
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"data\.filters\.min_sied"):
        load_config(p)


def test_mistyped_value_names_its_path():
    with pytest.raises(ConfigError, match=r"world\.grid"):
        load_config(overrides=["world.grid=three"])


def test_override_and_unknown_preset():
    assert load_config(overrides=["data.filters.min_side=12"]).data.filters.min_side == 12
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


def test_cli_config_show_prints_resolved_yaml():
    out = subprocess.run([sys.executable, "-m", "arm.cli", "config", "show", "--preset", "micro"],
                         capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(out)["preset"] == "micro"
    bad = subprocess.run([sys.executable, "-m", "arm.cli", "config", "show", "--set", "world.gird=3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "world.gird" in bad.stderr
