"""The `alignlab` command: run | stage | artifacts | models | data | eval | report | plan.

Errors that alignlab raises on purpose are printed as one message with exit code 2, never as a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.config import read_yaml
from alignlab.errors import AlignlabError, ConfigError


def setup_logging(verbose: bool = False) -> None:
    """alignlab logs to the console through rich; transformers stays quiet unless verbose."""
    from rich.console import Console
    from rich.logging import RichHandler

    # logs go to stderr, so that what a command prints (a path, JSON) can be piped
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True
    )
    logging.getLogger("alignlab").setLevel(logging.DEBUG if verbose else logging.INFO)
    import transformers

    transformers.logging.set_verbosity_info() if verbose else transformers.logging.set_verbosity_error()


def _registry(args: argparse.Namespace):
    from alignlab.registry import Registry

    return Registry(args.registry)


def print_results(results: Sequence[Any], title: str) -> None:
    """The end-of-run table: stage, artifact reference, gold score, gold accuracy, KL, time."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    table = Table(title=title)
    for col in ("entry", "stage", "artifact", "gold score", "gold accuracy", "KL to SFT", "time"):
        table.add_column(col)
    for r in results:
        m = r.artifact.metrics
        table.add_row(
            r.entry,
            r.stage,
            r.artifact.ref,
            fmt(m.get("gold_score")),
            fmt(m.get("gold_accuracy")),
            fmt(m.get("kl_to_reference")),
            "reused" if r.reused else f"{r.seconds:.0f}s",
        )
    # piped or logged output gets room for the artifact names (rich assumes 80 columns there)
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def cmd_run(args: argparse.Namespace) -> int:
    from alignlab.distributed.launch import build_launch_command, launch, needs_launch, run_args_from
    from alignlab.recipe import load_recipe, plan, run_recipe

    if needs_launch(args.nproc, args.hostfile):
        command = build_launch_command(
            args.recipe,
            args.nproc,
            args.hostfile,
            args.launcher,
            run_args=run_args_from(args),
            verbose=args.verbose,
        )
        return launch(command)

    recipe = load_recipe(args.recipe, args.overrides)
    for line in plan(recipe):
        print(line)
    force: bool | list[str] = True if args.force == ["*"] else (args.force or False)
    results = run_recipe(recipe, _registry(args), force=force, dry_run=args.dry_run)
    if args.dry_run:
        print("dry run: configs valid, references resolved; nothing trained")
        return 0
    print_results(results, f"recipe {recipe.name}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from alignlab.config import apply_overrides
    from alignlab.recipe import stage_inputs
    from alignlab.stages import STAGES

    if args.name not in STAGES:
        from alignlab.errors import did_you_mean

        raise ConfigError(
            f"unknown stage {args.name!r}{did_you_mean(args.name, STAGES)}; stages: {', '.join(STAGES)}"
        )
    cls = STAGES[args.name]
    raw: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
    inputs = dict(raw.pop("inputs", None) or {})
    roles = stage_inputs(cls)
    config_overrides = []
    for item in args.overrides:
        key = item.split("=", 1)[0]
        if key in roles:
            inputs[key] = item.split("=", 1)[1]
        else:
            config_overrides.append(item)
    config = apply_overrides(raw, config_overrides)
    from alignlab.config import load_config

    instance = cls(load_config(cls.config_cls, config, where=args.config or args.name))
    artifact = instance.run(_registry(args), force=args.force, **inputs)
    print(artifact.ref)
    for key in ("gold_score", "gold_accuracy", "perplexity", "train_loss_last"):
        if key in artifact.metrics:
            print(f"  {key}: {artifact.metrics[key]:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a recipe (YAML) end to end")
    run.add_argument("recipe", help="path to a recipe YAML")
    run.add_argument("overrides", nargs="*", help="ENTRY.key.path=value, or *.key=value for every entry")
    run.add_argument(
        "--force",
        nargs="*",
        metavar="ENTRY",
        help="retrain instead of reusing: all entries, or the named ones",
    )
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    run.add_argument(
        "--registry", default=None, help="registry folder (default: $ALIGNLAB_HOME or ./artifacts)"
    )
    run.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="processes (GPUs) per machine; more than 1 relaunches through --launcher (docs/scaling.md)",
    )
    run.add_argument(
        "--hostfile",
        default=None,
        metavar="FILE",
        help="several machines: a DeepSpeed hostfile, one 'hostname slots=N' per line",
    )
    run.add_argument(
        "--launcher",
        default=None,
        choices=["torchrun", "deepspeed", "accelerate"],
        help="default: torchrun on one machine, deepspeed with --hostfile",
    )
    run.set_defaults(func=cmd_run)

    stage = sub.add_parser("stage", help="run one stage")
    stage.add_argument("name", help="stage name: tiny_base, pretrain, sft, ...")
    stage.add_argument("--config", help="YAML with the stage's settings (and optionally 'inputs')")
    stage.add_argument(
        "overrides", nargs="*", help="key.path=value, or ROLE=REFERENCE for an input (model=sft)"
    )
    stage.add_argument("--force", action="store_true", help="retrain even if an identical artifact exists")
    stage.add_argument(
        "--registry", default=None, help="registry folder (default: $ALIGNLAB_HOME or ./artifacts)"
    )
    stage.set_defaults(func=cmd_stage)

    from alignlab.commands import artifacts, data, models, plan, report
    from alignlab.commands import eval as eval_command

    artifacts.register(sub)
    models.register(sub)
    data.register(sub)
    plan.register(sub)
    eval_command.register(sub)
    report.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after options (`run r.yaml --registry X a.b=1`): argparse leaves those over
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "force", None) == []:
        args.force = ["*"]
    setup_logging(args.verbose)
    previous = _terminate_like_interrupt()
    try:
        return int(args.func(args) or 0)
    except AlignlabError as err:
        print(f"alignlab: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print(
            "alignlab: terminated (SIGTERM); nothing was published for the unfinished stage", file=sys.stderr
        )
        return 143
    except KeyboardInterrupt:
        print("alignlab: interrupted; nothing was published for the unfinished stage", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as for Ctrl-C: staging folders
    removed, checkpoints kept, nothing published."""


def _terminate_like_interrupt() -> Any:
    """Route SIGTERM (what schedulers and ``kill`` send) through :class:`Terminated`; returns the
    previous handler (None when not in the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
