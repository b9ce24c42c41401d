"""The grid's `cluster:` section: time limits, profiles, bad values, and the submitit parameters it yields."""

from __future__ import annotations

import pytest

from kdbench.clusterconf import PROFILE_DIRS_ENV, parse_time_limit, validate_cluster
from kdbench.config import ConfigError, parse_grid
from kdbench.grid.slurm_submit import time_limit_warnings


@pytest.mark.parametrize(("value", "minutes"), [(90, 90), ("90", 90), ("00:01:30", 2), ("1:00:00", 60),
                                               ("1-02:00:00", 1560), ("05:00", 5)])
def test_time_limits_in_minutes(value, minutes):
    assert parse_time_limit(value) == minutes


@pytest.mark.parametrize("value", ["abc", 0, "00:00:00", True, "1:2:3:4"])
def test_bad_time_limits_name_the_value(value):
    with pytest.raises(ValueError, match="time = "):
        parse_time_limit(value)


def test_profile_values_are_overridden_by_the_grid():
    cluster = validate_cluster({"profile": "example-gpu-site", "partition": "big", "time": "01:00:00"})
    params = cluster.submitit_parameters()
    assert params["partition"] == "big" and params["time"] == 60  # the grid's keys win
    assert params["account"] == "my-lab" and params["gpus_per_node"] == 1 and params["ntasks_per_node"] == 1
    assert params["additional_parameters"] == {"mail-type": "FAIL"} and params["setup"] == ["module load cuda/12.4"]


def test_tasks_default_to_one_per_gpu():
    assert validate_cluster({"gpus_per_node": 4}).submitit_parameters()["ntasks_per_node"] == 4
    assert validate_cluster({"gpus_per_node": 4, "tasks_per_node": 1}).tasks == 1
    assert validate_cluster({}).tasks == 1


def test_profiles_from_a_site_directory(tmp_path, monkeypatch):
    (tmp_path / "mysite.yaml").write_text("partition: a100\nqos: high\n")
    monkeypatch.setenv(PROFILE_DIRS_ENV, str(tmp_path))
    assert validate_cluster({"profile": "mysite"}).qos == "high"
    (tmp_path / "broken.yaml").write_text("partiton: a100\n")
    with pytest.raises(ValueError, match="unknown field.*partiton"):
        validate_cluster({"profile": "broken"})


@pytest.mark.parametrize(("cluster", "expected"), [
    ({"profile": "nope"}, "profile = 'nope': no such profile; available: .*local"),
    ({"mem": "lots"}, "cluster.mem: mem = 'lots'"),
    ({"time": 1, "signal_delay_s": 60}, "signal_delay_s = 60: must be shorter than the time limit"),
    ({"extra_sbatch_args": {"array": "0-3"}}, "extra_sbatch_args sets \\['array'\\]"),
    ({"cpus_per_task": 0}, "cluster.cpus_per_task"),
    ({"partitoin": "gpu"}, "cluster.partitoin: unknown field"),
])
def test_bad_cluster_values_are_config_errors(cluster, expected):
    raw = {"name": "x", "datasets": [{"name": "synthetic"}], "methods": ["kd"],
           "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}], "executor": {"kind": "slurm"},
           "cluster": cluster}
    with pytest.raises(ConfigError, match=expected):
        parse_grid(raw)


def test_short_time_limit_is_warned_about():
    assert any("very short" in w for w in time_limit_warnings(validate_cluster({"time": 1}), []))
    assert time_limit_warnings(validate_cluster({"time": 30}), []) == []
