"""`alignlab eval`: evaluate an artifact; print the result and add it to the artifact's metrics.

Each sub-command stores its result with ``Registry.add_metrics`` (earlier results stay in the
artifact's metrics history; see ``alignlab artifacts history REF``) unless ``--no-store``.

Example:
    alignlab eval perplexity pretrain --data "testbed:pretrain?n=200&seed=1"
    alignlab eval mc sft --questions questions.jsonl --shots 5 --calibrate
    alignlab eval winrate ppo sft --prompts testbed:eval --judge gold
    alignlab eval grade sft --questions mt_bench.jsonl --judge openai:gpt-4o
    alignlab eval rm-accuracy reward_model --data "testbed:preferences?n=500&seed=3"
    alignlab eval best-of-n sft --reward reward_model --n 8
    alignlab eval overopt ppo
    alignlab eval gold sft --reward reward_model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.commands import Handler, friendly_errors
from alignlab.errors import ConfigError
from alignlab.registry import Artifact, Registry

if TYPE_CHECKING:
    from alignlab.models.engines import EngineKind

# alignlab.models.engines.EngineKind's values, spelled out: importing it here would load torch for
# every command (tests/unit/commands/test_eval_cli.py checks that the two agree)
ENGINES = ("hf", "vllm", "auto")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` command (and its sub-commands) to an argparse sub-parsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        metavar="PATH",
        default=None,
        help="registry folder (default: $ALIGNLAB_HOME or ./artifacts)",
    )
    common.add_argument(
        "--no-store", action="store_true", help="print the result only; add nothing to the metrics"
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    parser = subparsers.add_parser(
        "eval",
        help="evaluate an artifact and store the result in its metrics",
        description=__doc__.splitlines()[0],
    )
    sub = parser.add_subparsers(metavar="EVALUATION", required=True)

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=friendly_errors(handler))
        return p

    def engine_option(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument(
            "--engine",
            choices=ENGINES,
            default="hf",
            help=f"what {what}: hf (transformers' generate), vllm (vLLM loaded with the policy's "
            "weights) or auto (vLLM where it imports); default hf",
        )

    p = command("perplexity", _perplexity, "perplexity and bits per character on held-out text")
    p.add_argument("ref", metavar="REF", help="a causal LM reference")
    p.add_argument(
        "--data", required=True, help="text source: a file, testbed:pretrain?n=200&seed=1, a dataset"
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N documents")
    p.add_argument("--seq-len", type=int, default=None, help="chunk length (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=16)

    p = command("mc", _multiple_choice, "k-shot multiple-choice accuracy (MMLU / C-Eval style)")
    p.add_argument("ref", metavar="REF", help="a causal LM reference")
    p.add_argument(
        "--questions",
        required=True,
        help='JSONL {"question", "choices", "answer", "subject"?}, or C-Eval/MMLU rows {"question", "A".."D", "answer"} '
        "(JSONL or CSV; a CSV's subject is its file name)",
    )
    p.add_argument(
        "--template",
        choices=["mmlu", "ceval_zh"],
        default="mmlu",
        help="mmlu (English header, 'Answer:') or ceval_zh (C-Eval's Chinese header, '答案：')",
    )
    p.add_argument(
        "--subject-mapping",
        default=None,
        help="C-Eval's subject_mapping.json: subject names and categories (per-category accuracy)",
    )
    p.add_argument("--shots", type=int, default=5, help="solved examples before each question (default 5)")
    p.add_argument("--dev", default=None, help="JSONL the examples come from (default: the other questions)")
    p.add_argument("--calibrate", action="store_true", help="contextual calibration (Zhao et al. 2021)")
    p.add_argument(
        "--cot",
        action="store_true",
        help="chain-of-thought: worked examples (their 'explanation'), the answer read after the reasoning",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=256, help="--cot: the reasoning's budget (default 256)"
    )
    p.add_argument(
        "--content-free",
        nargs="+",
        default=["N/A"],
        metavar="TEXT",
        help="content-free inputs for --calibrate (default: N/A)",
    )
    p.add_argument("--batch-size", type=int, default=8)

    p = command("winrate", _winrate, "win rate of REF_A against REF_B, judged on a prompt set")
    p.add_argument("ref", metavar="REF_A")
    p.add_argument("ref_b", metavar="REF_B")
    p.add_argument(
        "--prompts", default="testbed:eval?n=100", help="prompt source (default: testbed:eval?n=100)"
    )
    p.add_argument(
        "--judge",
        default="gold",
        help="gold | REWARD_REF | pkg.mod:fn | llm:JUDGE_REF | openai:MODEL (default gold)",
    )
    p.add_argument("--judge-url", default=None, help="openai:MODEL: the endpoint's base URL")
    p.add_argument("--api-key-env", default=None, help="openai:MODEL: the variable holding its key")
    p.add_argument("--labels", default="12", choices=["12", "AB"], help="the LLM judge's answer labels")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    engine_option(p, "decodes both policies' answers")

    p = command("grade", _grade, "absolute 1-10 grades of REF's answers by a judge (FastChat single grading)")
    p.add_argument(
        "ref",
        metavar="REF",
        help="the policy that answers (greedy), or - to grade the file's 'answer' fields",
    )
    p.add_argument(
        "--questions",
        required=True,
        help='JSONL {"question", "reference"?, "category"?, "answer"?}; MT-Bench\'s question.jsonl as it is',
    )
    p.add_argument(
        "--judge",
        required=True,
        help="llm:MODEL_REF (a local model) or openai:MODEL (an OpenAI-compatible endpoint)",
    )
    p.add_argument(
        "--judge-url", default=None, help="the endpoint's base URL (default https://api.openai.com/v1)"
    )
    p.add_argument(
        "--api-key-env",
        default=None,
        help="environment variable holding the endpoint's key (default OPENAI_API_KEY)",
    )
    p.add_argument("--judge-max-tokens", type=int, default=None, help="the longest explanation (default 512)")
    p.add_argument(
        "--no-relative",
        action="store_true",
        help="skip Vicuna's relative score (it grades each reference answer too)",
    )
    p.add_argument("--limit", type=int, default=None, help="grade only the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=256, help="the policy's answer budget (default 256)")
    p.add_argument("--output", default=None, help="write every grade and rationale to this JSONL file")

    p = command("rm-accuracy", _rm_accuracy, "reward-model accuracy on a preference set")
    p.add_argument("ref", metavar="REF", help="a reward model reference (or pkg.mod:fn)")
    p.add_argument(
        "--data", required=True, help="preference source: a file, testbed:preferences?n=500&seed=3, ..."
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--batch-size", type=int, default=32)

    p = command("best-of-n", _best_of_n, "best-of-N curve of a policy under a reward (and the gold score)")
    p.add_argument("ref", metavar="REF", help="a causal LM reference (the policy)")
    p.add_argument("--reward", required=True, help="reward model reference or pkg.mod:fn")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    p.add_argument(
        "--prompts", default="testbed:eval?n=64", help="prompt source (default: testbed:eval?n=64)"
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw reward and gold against sqrt(KL)")
    engine_option(p, "samples the answers")

    p = command("overopt", _overopt, "over-optimisation along a PPO run: proxy and gold score against KL")
    p.add_argument("ref", metavar="PPO_REF")
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="where to draw the plot (default: reports/<name>-v<N>/overoptimization.png)",
    )
    p.add_argument("--x", choices=["sqrt_kl", "kl"], default="sqrt_kl", help="x axis (default sqrt_kl)")

    p = command(
        "gold",
        _gold,
        "testbed gold score per task family, format headroom, and whether a reward sees correctness",
    )
    p.add_argument("ref", metavar="REF", help="a causal LM reference (the policy)")
    p.add_argument("--n", type=int, default=200, help="held-out testbed prompts (default 200)")
    p.add_argument(
        "--reward",
        default=None,
        help="also probe this reward (model reference or pkg.mod:fn) on sampled answers",
    )
    p.add_argument("--k", type=int, default=8, help="samples per prompt for the reward probe (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pass-at-k",
        type=int,
        default=0,
        metavar="S",
        help="also sample S answers per prompt and report pass@1..S of exactly right answers per family",
    )
    engine_option(p, "decodes and samples the answers (greedy, --reward's and --pass-at-k's)")
    return parser


# ---- handlers -----------------------------------------------------------------------------------


def _perplexity(args: argparse.Namespace) -> int:
    from alignlab.data import load_records
    from alignlab.eval.perplexity import text_perplexity
    from alignlab.models import load_causal_lm

    registry = Registry(args.registry)
    texts = [
        r["text"] for r in load_records(args.data, kind="text", registry=registry, limit=args.limit).records
    ]
    model, tokenizer = load_causal_lm(args.ref, registry)
    result = text_perplexity(model, tokenizer, texts, seq_len=args.seq_len, batch_size=args.batch_size)
    lines = [
        f"perplexity {result.perplexity:.4f} ({result.tokens} tokens, {result.nll:.4f} nats/token)",
        f"bits per character {result.bits_per_char:.4f} ({result.characters} characters, "
        f"{result.documents} documents)",
    ]
    return _finish(
        args, registry, result, {**result.to_metrics(), "heldout_data": args.data}, "eval.perplexity", lines
    )


def _multiple_choice(args: argparse.Namespace) -> int:
    from alignlab.eval.multiple_choice import (
        evaluate_multiple_choice,
        evaluate_multiple_choice_cot,
        load_questions,
        load_subject_mapping,
    )
    from alignlab.models import load_causal_lm

    registry = Registry(args.registry)
    mapping = load_subject_mapping(args.subject_mapping) if args.subject_mapping else None
    chinese = args.template == "ceval_zh"
    questions = load_questions(args.questions, mapping=mapping, chinese_names=chinese)
    pool = load_questions(args.dev, mapping=mapping, chinese_names=chinese) if args.dev else None
    if args.cot and args.calibrate:
        raise ConfigError("eval mc: --cot reads generated answers; --calibrate applies to letter scores only")
    model, tokenizer = load_causal_lm(args.ref, registry)
    if args.cot:
        result = evaluate_multiple_choice_cot(
            model,
            tokenizer,
            questions,
            shots=args.shots,
            shot_pool=pool,
            template=args.template,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
    else:
        result = evaluate_multiple_choice(
            model,
            tokenizer,
            questions,
            shots=args.shots,
            calibrate_bias=args.calibrate,
            content_free=args.content_free,
            shot_pool=pool,
            batch_size=args.batch_size,
            template=args.template,
        )
    lines = [
        f"accuracy {result.accuracy:.4f} on {result.n} questions, {result.shots}-shot"
        f"{' (calibrated)' if result.calibrated else ''}; random baseline {result.random_baseline:.4f}"
    ]
    if result.calibrated:
        lines.append(f"accuracy before calibration {result.accuracy_uncalibrated:.4f}")
    if result.cot:
        lines.append(f"chain-of-thought: {result.unparsed} answer(s) named no option (counted wrong)")
    if len(result.per_subject) > 1:
        lines += [f"  {subject}: {acc:.4f}" for subject, acc in result.per_subject.items()]
    if result.per_category:
        lines += [f"  category {name}: {acc:.4f}" for name, acc in result.per_category.items()]
    return _finish(args, registry, result, result.to_metrics(args.questions), "eval.mc", lines)


def _winrate(args: argparse.Namespace) -> int:
    from alignlab.eval.winrate import win_rate

    registry = Registry(args.registry)
    result = win_rate(
        args.ref,
        args.ref_b,
        args.prompts,
        judge=args.judge,
        registry=registry,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        labels=args.labels,
        engine=_engine(args),
        endpoint={"base_url": args.judge_url, "api_key_env": args.api_key_env},
    )
    lines = [
        f"{result.policy_a} vs {result.policy_b}, judged by {result.judge} on {result.n} prompts:",
        f"win rate {result.win_rate:.4f} ({result.wins} wins, {result.ties} ties, {result.losses} losses); "
        f"mean P(A better) {result.preference_mean:.4f}",
    ]
    if result.score_a_mean is not None:
        lines.append(f"mean score: A {result.score_a_mean:.4f}, B {result.score_b_mean:.4f}")
    if result.position_bias is not None:
        lines.append(f"judge position bias {result.position_bias:+.4f} (cancelled by judging both orders)")
    return _finish(args, registry, result, result.to_metrics(), "eval.winrate", lines)


def _grade(args: argparse.Namespace) -> int:
    from alignlab.eval.grading import grade_answers, load_grading_questions, parse_judge

    registry = Registry(args.registry)
    questions = load_grading_questions(args.questions)[: args.limit]
    if args.ref == "-":
        missing = [i + 1 for i, q in enumerate(questions) if q.answer is None]
        if missing:
            raise ConfigError(
                f"REF '-' grades the file's answers, but question(s) {missing[:5]} have no 'answer'"
            )
        answers = [q.answer for q in questions]
        args.no_store = True
    else:
        from alignlab.models import generate, load_causal_lm

        model, tok = load_causal_lm(args.ref, registry)
        answers = generate(model, tok, [q.question for q in questions], max_new_tokens=args.max_new_tokens)
        del model
    judge = parse_judge(
        args.judge,
        registry,
        base_url=args.judge_url,
        api_key_env=args.api_key_env,
        max_tokens=args.judge_max_tokens,
    )
    result = grade_answers(
        judge,
        [q.question for q in questions],
        answers,  # type: ignore[arg-type]
        references=[q.reference for q in questions],
        categories=[q.category for q in questions],
        relative=not args.no_relative,
    )
    if args.output:
        from alignlab.data import write_records

        write_records(args.output, result.items)
    mean = "n/a" if result.score_mean is None else f"{result.score_mean:.2f}"
    lines = [f"{args.ref} graded by {result.judge} on {result.n} questions: mean {mean} / 10"]
    if result.failed:
        lines.append(f"{result.failed} answer(s) got no rating from the judge (left out of the means)")
    if len(result.per_category) > 1:
        lines += [f"  {name}: {value:.2f}" for name, value in result.per_category.items()]
    if result.relative_score is not None:
        lines.append(
            f"relative score {result.relative_score:.3f} (candidate / reference total; references "
            f"{result.reference_score_mean:.2f} / 10)"
        )
    if result.length_spearman is not None:
        lines.append(
            f"length bias: Spearman(length, score) {result.length_spearman:+.3f}; longer half minus "
            f"shorter half {result.length_gap:+.2f}"
        )
    return _finish(args, registry, result, result.to_metrics(args.questions), "eval.grade", lines)


def _rm_accuracy(args: argparse.Namespace) -> int:
    from alignlab.eval.reward_accuracy import evaluate_reward_accuracy

    registry = Registry(args.registry)
    result = evaluate_reward_accuracy(
        args.ref, args.data, registry, limit=args.limit, batch_size=args.batch_size
    )
    lines = [
        f"accuracy {result.accuracy:.4f} on {result.pairs} pairs ({result.ties} ties); "
        f"mean margin {result.margin_mean:.4f}"
    ]
    return _finish(args, registry, result, result.to_metrics(), "eval.rm_accuracy", lines)


def _best_of_n(args: argparse.Namespace) -> int:
    from alignlab.eval.overoptimization import best_of_n_eval, plot_overoptimization

    registry = Registry(args.registry)
    result = best_of_n_eval(
        args.ref,
        args.reward,
        args.prompts,
        args.n,
        registry,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        limit=args.limit,
        engine=_engine(args),
    )
    lines = [
        f"best of N under {result.reward_ref} ({result.prompts} prompts):",
        "    N   KL(nats)   reward" + ("      gold" if result.gold else ""),
    ]
    for n in sorted(result.reward):
        gold = f"  {result.gold[n]:8.4f}" if result.gold else ""
        lines.append(f"  {n:3d}  {result.kl[n]:8.4f}  {result.reward[n]:8.4f}{gold}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        lines.append(f"plot: {plot_overoptimization(result.points(), args.plot, title='best of N')}")
    return _finish(args, registry, result, result.to_metrics(), "eval.best_of_n", lines)


def _overopt(args: argparse.Namespace) -> int:
    from alignlab.eval.overoptimization import overoptimization, plot_overoptimization
    from alignlab.eval.report import default_report_dir

    registry = Registry(args.registry)
    art = registry.get(args.ref)
    result = overoptimization(registry, art)
    plot = Path(args.plot) if args.plot else default_report_dir(art) / "overoptimization.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_overoptimization(result.points, plot, x=args.x, title=f"{art.ref}: over-optimisation")
    lines = [f"{art.ref}: {len(result.points)} steps, final KL {result.kl_final:.4f}"]
    if result.gold_peak is not None:
        lines.append(
            f"gold score peaked at {result.gold_peak:.4f} (step {result.gold_peak_step:g}, KL "
            f"{result.gold_peak_kl:.4f}); final {result.gold_final:.4f}"
        )
    if result.proxy_final is not None:
        lines.append(f"proxy ({result.proxy_key}) final {result.proxy_final:.4f}")
    lines.append(
        "over-optimised: the gold score fell while the proxy rose"
        if result.overoptimized
        else "no sign of over-optimisation"
    )
    lines.append(f"plot: {plot}")
    return _finish(args, registry, result, result.to_metrics(), "eval.overopt", lines)


def _gold(args: argparse.Namespace) -> int:
    from alignlab.eval.gold_breakdown import gold_breakdown, reward_sees_correctness

    registry = Registry(args.registry)
    engine = _engine(args)
    result = gold_breakdown(args.ref, args.n, registry, max_new_tokens=args.max_new_tokens, engine=engine)
    lines = [
        f"{args.ref}: gold {result.gold_score:.4f}, accuracy {result.gold_accuracy:.4f}, format "
        f"{result.gold_format:.4f}, format headroom {result.format_headroom:.4f} ({result.prompts} prompts)",
        f"  {'family':14s} {'n':>4s} {'gold':>7s} {'acc':>7s} {'format':>7s} {'headroom':>9s}",
    ]
    for name, fam in result.families.items():
        lines.append(
            f"  {name:14s} {fam.prompts:4d} {fam.gold_score:7.3f} {fam.gold_accuracy:7.3f} "
            f"{fam.gold_format:7.3f} {fam.format_headroom:9.3f}"
        )
    metrics = result.to_metrics()
    output: Any = result
    if args.pass_at_k:
        from alignlab.eval.gold_breakdown import correctness_pass_at_k

        passes = correctness_pass_at_k(
            args.ref,
            args.n,
            args.pass_at_k,
            registry,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            engine=engine,
        )
        ks = list(passes.overall)
        lines.append(
            f"pass@k of exactly right answers ({passes.samples} samples per prompt, temperature 1; "
            f"greedy accuracy {passes.greedy_accuracy:.3f}):"
        )
        lines.append(f"  {'family':14s} " + " ".join(f"{'pass@' + str(k):>8s}" for k in ks))
        for name, curve in [("all", passes.overall), *passes.families.items()]:
            lines.append(f"  {name:14s} " + " ".join(f"{curve[k]:8.3f}" for k in ks))
        metrics = {**metrics, **passes.to_metrics()}
        output = {"breakdown": _as_json(result), "pass_at_k": _as_json(passes)}
    if args.reward:
        probe = reward_sees_correctness(
            args.ref,
            args.reward,
            args.n,
            args.k,
            registry,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            engine=engine,
        )
        share = "n/a" if probe.share is None else f"{probe.share:.3f}"
        lines.append(
            f"{args.reward} ranks the correct answer first in {share} of {probe.pairs} (correct, wrong) "
            f"pairs of clean samples (0.5 = blind to correctness; {probe.k} samples per prompt, "
            f"sampled accuracy {probe.sampled_accuracy:.3f})"
        )
        metrics = {**metrics, **probe.to_metrics(), "correctness_reward": args.reward}
        output = {
            **(output if isinstance(output, dict) else {"breakdown": _as_json(result)}),
            "probe": _as_json(probe),
        }
    return _finish(args, registry, output, metrics, "eval.gold", lines)


def _engine(args: argparse.Namespace) -> EngineKind:
    """``--engine``, resolved before anything loads: ``auto`` becomes hf or vllm, and vllm where
    vLLM does not import is an error that names the option."""
    from alignlab.models.engines import resolve_engine

    return resolve_engine(args.engine, "--engine")


# ---- output and storage -------------------------------------------------------------------------


def _finish(
    args: argparse.Namespace,
    registry: Registry,
    result: Any,
    metrics: dict[str, Any],
    source: str,
    lines: list[str],
) -> int:
    """Print the result (text or JSON) and add ``metrics`` to the artifact unless ``--no-store``."""
    stored = None if args.no_store else store(registry, args.ref, metrics, source)
    if args.json:
        print(json.dumps({"result": _as_json(result), "stored_in": stored}, indent=2, default=str))
        return 0
    print("\n".join(lines))
    if stored:
        print(f"stored in the metrics of {stored} (history: alignlab artifacts history {stored})")
    elif not args.no_store:
        print(f"not stored: {args.ref} is not a registry artifact")
    return 0


def store(registry: Registry, ref: str, metrics: dict[str, Any], source: str) -> str | None:
    """Add ``metrics`` to the artifact ``ref`` (history kept); None when ``ref`` is not an artifact."""
    target = registry.resolve(ref) if not _is_import_path(ref) else None
    if not isinstance(target, Artifact):
        return None
    return registry.add_metrics(target, metrics, source).ref


def _is_import_path(ref: str) -> bool:
    from alignlab.rewards import is_import_path

    return is_import_path(ref)


def _as_json(result: Any) -> Any:
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
