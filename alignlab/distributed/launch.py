"""``alignlab run RECIPE --nproc N [--hostfile H]``: one command, relaunched under a launcher.

``alignlab run`` with more than one process re-runs itself as ``python -m alignlab.cli run
RECIPE ...`` in every process, through one of three launchers:

- ``torchrun`` (default on one machine): ``python -m torch.distributed.run --standalone
  --nproc-per-node N``;
- ``deepspeed`` (default with a hostfile): DeepSpeed's runner reaches every host of the
  hostfile over ssh (pdsh) and starts ``--num_gpus N`` processes on each;
- ``accelerate``: ``accelerate launch``; with a hostfile it hands over to DeepSpeed's
  multi-node runner the same way.

Every launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; the stages read them (through
:func:`alignlab.distributed.config.current_world_size`) to decide whether to shard. See
docs/scaling.md.

Example:
    >>> build_launch_command("recipes/sft.yaml", 4, python="python")
    ['python', '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '4', '--module', 'alignlab.cli', 'run', 'recipes/sft.yaml']
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from alignlab.errors import ConfigError, did_you_mean


class Launcher(StrEnum):
    """What starts the processes."""

    TORCHRUN = "torchrun"  # one machine (multi-node only by hand, with --nnodes on each node)
    DEEPSPEED = "deepspeed"  # one machine or a hostfile (ssh/pdsh to every host)
    ACCELERATE = "accelerate"  # one machine, or a hostfile through DeepSpeed's multi-node runner


@dataclass(frozen=True)
class Host:
    """One line of a DeepSpeed hostfile (``worker-1 slots=8``).

    Attributes:
        name: the host name or address ssh reaches it by.
        slots: GPUs (processes) it offers.
    """

    name: str
    slots: int


_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


def read_hostfile(path: str | Path) -> list[Host]:
    """Parse a DeepSpeed (MPI-style) hostfile: ``host slots=N`` per line, ``#`` comments.

    Raises:
        ConfigError: the file is missing, empty, has a bad line (named by line number) or a host twice.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"hostfile {file} not found; it lists one 'hostname slots=N' per line")
    hosts: list[Host] = []
    for lineno, raw in enumerate(file.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _HOST_LINE.match(line)
        if not match:
            raise ConfigError(f"{file}:{lineno}: expected 'hostname slots=N', got {line!r}")
        if any(h.name == match.group(1) for h in hosts):
            raise ConfigError(f"{file}:{lineno}: host {match.group(1)!r} is listed twice")
        hosts.append(Host(match.group(1), int(match.group(2))))
    if not hosts:
        raise ConfigError(f"{file}: no hosts; write one 'hostname slots=N' per line")
    return hosts


def build_launch_command(
    recipe: str | Path,
    nproc: int | None,
    hostfile: str | Path | None = None,
    launcher: str | Launcher | None = None,
    *,
    run_args: Sequence[str] = (),
    verbose: bool = False,
    master_port: int | None = None,
    python: str | None = None,
) -> list[str]:
    """The command line that runs ``alignlab run RECIPE`` in ``nproc`` processes per machine.

    Args:
        recipe: the recipe YAML.
        nproc: processes (GPUs) per machine; None with a hostfile = every slot it lists.
        hostfile: a DeepSpeed hostfile for several machines (read only by the accelerate launcher,
            which needs the number of machines).
        launcher: torchrun | deepspeed | accelerate; None = torchrun, or deepspeed with a hostfile.
        run_args: the rest of the ``alignlab run`` arguments (overrides, ``--registry``, ...).
        verbose: pass ``-v`` to every process.
        master_port: the rendezvous port (default: a free one on one machine, 29500 across several).
        python: the interpreter (default: this one; every host must have it at the same path).

    Raises:
        ConfigError: an unknown launcher, a bad process count, or torchrun with a hostfile.
    """
    kind = _launcher(launcher, hostfile)
    if nproc is None and hostfile is None:
        nproc = 1
    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    py = python or sys.executable
    inner = ["alignlab.cli", *(["-v"] if verbose else []), "run", str(recipe), *run_args]
    if kind is Launcher.TORCHRUN:
        if hostfile is not None:
            raise ConfigError(
                "torchrun has no hostfile: use --launcher deepspeed or accelerate with --hostfile, or start "
                "torchrun on every machine yourself (--nnodes, --node-rank, --master-addr; see docs/scaling.md)"
            )
        port = ["--master-port", str(master_port)] if master_port else ["--standalone"]
        return [py, "-m", "torch.distributed.run", *port, "--nproc-per-node", str(nproc), "--module", *inner]
    if kind is Launcher.DEEPSPEED:
        cmd = [py, "-m", "deepspeed.launcher.runner"]
        if hostfile is not None:
            cmd += ["--hostfile", str(hostfile)]
        if nproc is not None:
            cmd += ["--num_gpus", str(nproc)]
        if master_port:
            cmd += ["--master_port", str(master_port)]
        return [*cmd, "--module", *inner]
    cmd = [py, "-m", "accelerate.commands.launch"]
    if hostfile is None:
        cmd += ["--num_machines", "1", "--num_processes", str(nproc)] + (["--multi_gpu"] if nproc > 1 else [])
        if master_port:
            cmd += ["--main_process_port", str(master_port)]
    else:
        hosts = read_hostfile(hostfile)
        per_host = nproc or min(h.slots for h in hosts)
        cmd += [
            "--use_deepspeed",
            "--num_machines", str(len(hosts)),
            "--num_processes", str(per_host * len(hosts)),
            "--deepspeed_hostfile", str(hostfile),
            "--deepspeed_multinode_launcher", "pdsh",
            "--main_process_port", str(master_port or 29500),
        ]  # fmt: skip
    return [*cmd, "--dynamo_backend", "no", "--module", *inner]


def _launcher(launcher: str | Launcher | None, hostfile: str | Path | None) -> Launcher:
    if launcher is None:
        return Launcher.DEEPSPEED if hostfile is not None else Launcher.TORCHRUN
    try:
        return Launcher(launcher)
    except ValueError:
        names = [k.value for k in Launcher]
        raise ConfigError(
            f"unknown launcher {launcher!r}{did_you_mean(str(launcher), names)}; use one of {', '.join(names)}"
        ) from None


def inside_launcher(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by a launcher (so it must not launch again)."""
    env = os.environ if env is None else env
    return "LOCAL_RANK" in env or "RANK" in env


def needs_launch(
    nproc: int | None, hostfile: str | Path | None, env: Mapping[str, str] | None = None
) -> bool:
    """More than one process was asked for, and no launcher has started this one yet."""
    return (hostfile is not None or (nproc or 1) > 1) and not inside_launcher(env)


def run_args_from(args: argparse.Namespace) -> list[str]:
    """``alignlab run``'s own arguments, minus the launch options, to hand to every process.

    Overrides come first: ``--force NAME...`` would swallow any that followed it.
    """
    out = list(getattr(args, "overrides", None) or [])
    if getattr(args, "registry", None):
        out += ["--registry", str(args.registry)]
    force = getattr(args, "force", None)
    if force == ["*"]:
        out.append("--force")
    elif force:
        out += ["--force", *force]
    if getattr(args, "dry_run", False):
        out.append("--dry-run")
    return out


def launch(command: Sequence[str]) -> int:
    """Print and run a launch command; its exit status."""
    print("launching: " + shlex.join(command), flush=True)
    try:
        return subprocess.call(list(command))
    except FileNotFoundError as err:
        raise ConfigError(f"cannot start {command[0]!r}: {err}") from err
