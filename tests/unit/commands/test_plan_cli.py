"""`alignlab plan` through argparse: the worked example, PPO's four models, JSON, errors."""

from __future__ import annotations

import argparse
import json

import pytest

from alignlab.commands import plan as plan_cmd


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="alignlab")
    plan_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_7b_worked_example(capsys):
    code, out, _ = run(capsys, "--model", "7B", "--stage", "sft", "--accounting", "no_master")
    assert code == 0
    assert "7.00B parameters" in out and "12 bytes per trained parameter" in out
    policy = next(line for line in out.splitlines() if line.startswith("policy"))
    assert policy.split()[1:4] == ["13.04", "13.04", "52.15"]  # 14 + 14 + 56 GB = 84 GB = 78.2 GiB
    assert "does NOT fit a 80 GiB GPU" in out


def test_ppo_lists_its_four_models_and_the_configurations(capsys):
    code, out, _ = run(capsys, "--model", "llama-2-7b", "--stage", "ppo", "--zero", "3", "--gpus", "8",
                       "--gradient-checkpointing")  # fmt: skip
    assert code == 0
    roles = [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["actor"], ["critic"],
                                                                                   ["reference"], ["reward"])]  # fmt: skip
    assert roles == ["actor", "critic", "reference", "reward"]
    assert "configurations on 8 x 80 GiB GPUs" in out
    assert "3 <-" in out  # the configuration asked for is marked


def test_json_output(capsys):
    code, out, _ = run(capsys, "--model", "opt-1.3b", "--stage", "dpo", "--zero", "2", "--gpus", "4",
                       "--gpu-mem", "24", "--json")  # fmt: skip
    data = json.loads(out)
    assert code == 0 and data["plan"]["stage"] == "dpo" and data["plan"]["setup"]["zero_stage"] == 2
    assert [c["zero_stage"] for c in data["configurations"]] == [0, 1, 1, 2, 2, 3, 3, 3]
    for c in data["configurations"]:
        assert c["fits"] == (c["per_gpu_gib"] <= 0.9 * 24)
        assert c["min_gpus"] is None or c["min_gpus"] >= 1


def test_qlora_defaults_to_rank_8(capsys):
    code, out, _ = run(capsys, "--model", "70B", "--qlora", "--gpu-mem", "48")
    assert code == 0 and "QLoRA r=8" in out and "4-bit NF4" in out


def test_errors_are_one_line_with_exit_code_2(capsys):
    code, _, err = run(capsys, "--model", "llama-2-7", "--stage", "sft")
    assert code == 2 and err.startswith("error: unknown model") and "did you mean 'llama-2-7b'" in err
    code, _, err = run(capsys, "--model", "7B", "--offload-params", "--zero", "2")
    assert code == 2 and "zero_stage 3" in err
