"""`alignlab eval ...` and `alignlab report` through argparse, on tiny models built from config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from alignlab.commands import eval as eval_cmd
from alignlab.commands import report as report_cmd
from alignlab.registry import Registry

SENTENCES = [
    "What is 3 plus 4? The answer is 7.",
    "Mira lives in Oakvale.",
    "Answer: A B C D",
    "Which answer is better? Reply with 1 or 2.",
]


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A registry with a tiny policy, a tiny reward model beside it and a PPO-like artifact."""
    from transformers import LlamaForSequenceClassification

    from alignlab.models import save_model, tiny_llama, train_bpe_tokenizer

    reg = Registry(tmp_path_factory.mktemp("registry"))
    tok = train_bpe_tokenizer(SENTENCES * 5, vocab_size=320)
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    model = tiny_llama("test", len(tok), **ids)
    with reg.publishing("policy", kind="model", stage="tiny_base", parents=["hf:org/none"]) as pub:
        save_model(model, tok, pub.dir)
        pub.metrics["gold_score"] = 0.1
    policy = pub.artifact
    config = model.config.to_dict() | {"num_labels": 1, "architectures": None}
    with reg.publishing("rm", kind="reward_model", stage="reward_model", parents=[policy]) as pub:
        save_model(LlamaForSequenceClassification(type(model.config).from_dict(config)), tok, pub.dir)
    history = [
        {"step": s, "reward_score": s / 4, "kl": s / 2, "gold_score": [0.3, 0.5, 0.6, 0.5, 0.4][s - 1]}
        for s in range(1, 6)
    ]
    with reg.publishing("ppo", kind="model", stage="ppo", parents=[policy]) as pub:
        pub.metrics["history"] = history
    return reg


@pytest.fixture
def cli(reg: Registry, capsys: pytest.CaptureFixture[str]):
    """Run ``alignlab eval|report ARGS... --registry <reg>``; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="alignlab")
        sub = parser.add_subparsers()
        eval_cmd.register(sub)
        report_cmd.register(sub)
        args = parser.parse_args([*argv, "--registry", str(reg.root)])
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _sources(reg: Registry, ref: str) -> list[str]:
    return [h["source"] for h in reg.metrics_history(ref)]


def test_perplexity_prints_stores_and_keeps_history(cli, reg: Registry, tmp_path: Path) -> None:
    data = tmp_path / "heldout.jsonl"
    data.write_text("\n".join(json.dumps({"text": s}) for s in SENTENCES))
    code, out, _ = cli("eval", "perplexity", "policy", "--data", str(data))
    assert code == 0 and "bits per character" in out and "stored in the metrics of policy:v1" in out
    first = reg.get("policy").metrics
    assert first["heldout_characters"] == sum(len(s) for s in SENTENCES) and first["heldout_data"] == str(
        data
    )
    code, out, _ = cli("eval", "perplexity", "policy", "--data", str(data), "--limit", "2", "--no-store")
    assert code == 0 and "stored" not in out
    assert reg.get("policy").metrics["heldout_documents"] == 4  # --no-store changed nothing
    cli("eval", "perplexity", "policy", "--data", str(data), "--limit", "2")
    assert reg.get("policy").metrics["heldout_documents"] == 2
    assert reg.get("policy").metrics["gold_score"] == 0.1  # the stage's own metrics stay
    assert _sources(reg, "policy").count("eval.perplexity") == 2  # both runs are in the history


def test_multiple_choice_with_calibration_as_json(cli, reg: Registry, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    rows = [
        {
            "question": f"What is {i} plus 1?",
            "choices": [str(i), str(i + 1), "0", "9"],
            "answer": "B",
            "subject": "math",
        }
        for i in range(4)
    ]
    questions.write_text("\n".join(json.dumps(r) for r in rows))
    code, out, _ = cli(
        "eval", "mc", "policy", "--questions", str(questions), "--shots", "1", "--calibrate", "--json"
    )
    result = json.loads(out)
    assert code == 0 and result["stored_in"] == "policy:v1"
    assert result["result"]["random_baseline"] == 0.25 and result["result"]["calibrated"] is True
    assert reg.get("policy").metrics["mc_questions"] == str(questions)


def test_winrate_of_a_policy_against_itself_is_one_half_for_any_judge(cli, reg: Registry) -> None:
    common = ["--prompts", "testbed:eval?n=2", "--max-new-tokens", "3"]
    code, out, _ = cli("eval", "winrate", "policy", "policy:v1", *common)
    assert code == 0 and "win rate 0.5000 (0 wins, 2 ties, 0 losses)" in out
    code, out, _ = cli(
        "eval", "winrate", "policy", "policy:v1", *common, "--judge", "llm:policy", "--labels", "AB"
    )
    assert code == 0 and "win rate 0.5000" in out and "position bias" in out
    metrics = reg.get("policy").metrics
    assert metrics["win_rate_judge"] == "llm:policy" and metrics["win_rate_opponent"] == "policy:v1"


def test_reward_accuracy_stores_into_the_reward_model_not_into_a_function(cli, reg: Registry, tmp_path: Path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt": "What is 3 plus 4?",
                    "chosen": "The answer is 7.",
                    "rejected": f"The answer is {n}.",
                }
            )
            for n in (5, 6, 8)
        )
    )
    code, out, _ = cli("eval", "rm-accuracy", "rm", "--data", str(pairs))
    assert code == 0 and "on 3 pairs" in out and reg.get("rm").metrics["rm_pairs"] == 3
    code, out, _ = cli("eval", "rm-accuracy", "alignlab.testbed:gold_reward_fn", "--data", str(pairs))
    assert code == 0 and "accuracy 1.0000" in out and "not stored" in out


def test_best_of_n_under_a_reward_function(cli, reg: Registry, tmp_path: Path) -> None:
    code, out, _ = cli(
        "eval",
        "best-of-n",
        "policy",
        "--reward",
        "alignlab.testbed:gold_reward_fn",
        "--n",
        "2",
        "--prompts",
        "testbed:eval?n=2",
        "--max-new-tokens",
        "3",
        "--plot",
        str(tmp_path / "b.png"),
    )
    assert code == 0 and "gold" in out and (tmp_path / "b.png").is_file()
    metrics = reg.get("policy").metrics
    assert (
        set(metrics["bon_eval_reward"]) == {"1", "2"}
        and metrics["bon_eval_gold"] == metrics["bon_eval_reward"]
    )


def test_overopt_reads_the_ppo_history_and_report_writes_the_page(cli, reg: Registry, tmp_path: Path) -> None:
    code, out, _ = cli("eval", "overopt", "ppo", "--plot", str(tmp_path / "o.png"))
    assert code == 0 and "over-optimised" in out and "peaked at 0.6000 (step 3" in out
    assert (tmp_path / "o.png").is_file() and reg.get("ppo").metrics["overopt_overoptimized"] is True
    code, out, _ = cli("report", "ppo", "--out", str(tmp_path / "report"))
    assert code == 0 and Path(out.strip()) == tmp_path / "report" / "index.html"
    assert "overopt" in Path(out.strip()).read_text()


def test_errors_are_one_line_and_exit_code_2(cli) -> None:
    code, _, err = cli("eval", "overopt", "policy")
    assert code == 2 and err.startswith("error: policy:v1 has no 'history' metric")
    code, _, err = cli("report", "nope")
    assert code == 2 and "no artifact 'nope'" in err


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab")
    eval_cmd.register(parser.add_subparsers())
    return parser


@pytest.mark.parametrize(
    "argv",
    [["gold", "sft", "--pass-at-k", "4"], ["best-of-n", "sft", "--reward", "rm"], ["winrate", "ppo", "sft"]],
)
def test_the_sampling_evaluations_take_an_engine_and_refuse_a_bad_one(argv, capsys) -> None:
    from alignlab.models.engines import EngineKind

    assert eval_cmd.ENGINES == tuple(e.value for e in EngineKind)
    parser = _eval_parser()
    assert parser.parse_args(["eval", *argv]).engine == "hf"  # the default keeps transformers' generate
    for engine in ("hf", "vllm", "auto"):
        assert parser.parse_args(["eval", *argv, "--engine", engine]).engine == engine
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["eval", *argv, "--engine", "foo"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "argument --engine: invalid choice: 'foo'" in err and "'vllm'" in err and "'auto'" in err


def test_the_engine_reaches_every_generate_call_of_eval_gold(monkeypatch, tmp_path: Path, capsys) -> None:
    import importlib

    import alignlab.models
    import alignlab.models.engines as engines

    breakdown = importlib.import_module("alignlab.eval.gold_breakdown")  # the module, not the function
    monkeypatch.setattr(engines, "vllm_unavailable", lambda: None)  # as if vLLM imported here
    monkeypatch.setattr(breakdown, "_load_policy", lambda *a: (object(), object()))
    calls = []

    def generate(model, tokenizer, prompts, **kwargs):
        calls.append((len(prompts), kwargs))
        return ["The answer is 11."] * len(prompts)

    monkeypatch.setattr(alignlab.models, "generate", generate)
    args = _eval_parser().parse_args(
        ["eval", "gold", "policy", "--n", "4", "--pass-at-k", "3", "--engine", "vllm", "--no-store"]
    )
    args.registry = str(tmp_path)
    assert args.func(args) == 0 and "pass@3" in capsys.readouterr().out
    assert {kw["engine"] for _, kw in calls} == {"vllm"}
    # the breakdown's and pass@k's greedy answers, then all 3 rounds of samples in one vLLM call
    assert [(n, kw["do_sample"]) for n, kw in calls] == [(4, False), (4, False), (12, True)]


def test_engine_vllm_where_vllm_does_not_import_is_a_one_line_error(monkeypatch, tmp_path: Path, capsys):
    import alignlab.models.engines as engines

    monkeypatch.setattr(engines, "vllm_unavailable", lambda: "ImportError: No module named 'vllm'")
    args = _eval_parser().parse_args(["eval", "gold", "policy", "--engine", "vllm"])
    args.registry = str(tmp_path)
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --engine=vllm, but vLLM does not import here") and "--engine=hf" in err
