"""Launch commands: built purely, and accepted by the installed launchers' own argument parsers."""

from __future__ import annotations

import argparse

import pytest

from alignlab.distributed.launch import (
    Host,
    build_launch_command,
    inside_launcher,
    needs_launch,
    read_hostfile,
    run_args_from,
)
from alignlab.errors import ConfigError

PY = "/venv/bin/python"
INNER = ["alignlab.cli", "run", "r.yaml", "sft.train.lr=1e-5", "--registry", "/reg"]


@pytest.fixture
def hostfile(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("# two machines\nworker-1 slots=8\n\nworker-2 slots=8\n")
    return path


def test_torchrun_on_one_machine():
    cmd = build_launch_command("r.yaml", 4, run_args=INNER[3:], python=PY)
    assert cmd == [
        PY,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "4",
        "--module",
        *INNER,
    ]
    assert build_launch_command("r.yaml", 2, master_port=29600, python=PY)[3:5] == ["--master-port", "29600"]
    assert build_launch_command("r.yaml", 2, verbose=True, python=PY)[-4:] == [
        "alignlab.cli",
        "-v",
        "run",
        "r.yaml",
    ]


def test_deepspeed_with_a_hostfile(hostfile):
    # with a hostfile the deepspeed launcher is the default
    cmd = build_launch_command("r.yaml", 8, hostfile, run_args=INNER[3:], python=PY)
    assert cmd == [PY, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--num_gpus", "8",
                   "--module", *INNER]  # fmt: skip
    every_slot = build_launch_command("r.yaml", None, hostfile, "deepspeed", python=PY)
    assert "--num_gpus" not in every_slot
    assert build_launch_command("r.yaml", 4, launcher="deepspeed", python=PY)[3:5] == ["--num_gpus", "4"]


def test_accelerate_on_one_machine_and_with_a_hostfile(hostfile):
    one = build_launch_command("r.yaml", 4, launcher="accelerate", python=PY)
    assert one[:3] == [PY, "-m", "accelerate.commands.launch"]
    assert one[3:9] == ["--num_machines", "1", "--num_processes", "4", "--multi_gpu", "--dynamo_backend"]
    many = build_launch_command("r.yaml", None, hostfile, "accelerate", python=PY)
    assert many[3:15] == ["--use_deepspeed", "--num_machines", "2", "--num_processes", "16", "--deepspeed_hostfile",
                          str(hostfile), "--deepspeed_multinode_launcher", "pdsh", "--main_process_port", "29500",
                          "--dynamo_backend"]  # fmt: skip


def test_refusals(hostfile):
    with pytest.raises(ConfigError, match="torchrun has no hostfile"):
        build_launch_command("r.yaml", 8, hostfile, "torchrun")
    with pytest.raises(ConfigError, match="did you mean 'deepspeed'"):
        build_launch_command("r.yaml", 8, launcher="deepspeeed")
    with pytest.raises(ConfigError, match="at least 1"):
        build_launch_command("r.yaml", 0)


def test_torchruns_parser_accepts_the_command():
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(build_launch_command("r.yaml", 4, run_args=INNER[3:], python=PY)[3:])
    assert (args.nproc_per_node, args.standalone, args.module) == ("4", True, True)
    assert (args.training_script, args.training_script_args) == ("alignlab.cli", INNER[1:])


def test_deepspeeds_parser_accepts_the_command(hostfile):
    from deepspeed.launcher.runner import parse_args

    args = parse_args(build_launch_command("r.yaml", 8, hostfile, run_args=INNER[3:], python=PY)[3:])
    assert (args.hostfile, args.num_gpus, args.module) == (str(hostfile), 8, True)
    assert (args.user_script, args.user_args) == ("alignlab.cli", INNER[1:])


@pytest.mark.parametrize("nproc,with_hostfile", [(4, False), (None, True)])
def test_accelerates_parser_accepts_the_command(hostfile, nproc, with_hostfile):
    from accelerate.commands.launch import launch_command_parser

    cmd = build_launch_command("r.yaml", nproc, hostfile if with_hostfile else None, "accelerate",
                               run_args=INNER[3:], python=PY)  # fmt: skip
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.module and (args.training_script, args.training_script_args) == ("alignlab.cli", INNER[1:])
    assert (args.num_machines, args.num_processes) == ((2, 16) if with_hostfile else (1, 4))
    assert args.use_deepspeed is with_hostfile


def test_hostfile_reads_like_deepspeeds(hostfile):
    from deepspeed.launcher.runner import _parse_hostfile

    assert read_hostfile(hostfile) == [Host("worker-1", 8), Host("worker-2", 8)]
    assert dict(_parse_hostfile(hostfile.read_text().splitlines())) == {"worker-1": 8, "worker-2": 8}


def test_bad_hostfiles_name_the_line(tmp_path):
    bad = tmp_path / "h"
    bad.write_text("worker-1 slots=8\nworker-2 gpus=8\n")
    with pytest.raises(ConfigError, match=r"h:2: expected 'hostname slots=N'"):
        read_hostfile(bad)
    bad.write_text("a slots=1\na slots=2\n")
    with pytest.raises(ConfigError, match="listed twice"):
        read_hostfile(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no hosts"):
        read_hostfile(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_hostfile(tmp_path / "missing")


def test_a_launched_process_does_not_launch_again():
    assert needs_launch(4, None, env={}) and needs_launch(None, "hosts", env={})
    assert not needs_launch(1, None, env={}) and not needs_launch(None, None, env={})
    assert not needs_launch(4, None, env={"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "4"})
    assert inside_launcher({"RANK": "3"}) and not inside_launcher({})


def test_run_args_are_handed_on():
    args = argparse.Namespace(overrides=["a.b=1"], registry="/reg", force=["sft"], dry_run=True)
    assert run_args_from(args) == ["a.b=1", "--registry", "/reg", "--force", "sft", "--dry-run"]
    args = argparse.Namespace(overrides=[], registry=None, force=["*"], dry_run=False)
    assert run_args_from(args) == ["--force"]
