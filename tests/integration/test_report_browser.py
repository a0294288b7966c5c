"""The report renders in a real browser (headless Chromium) with every plot loaded.

Needs Debian's chromium package (``make test-deps``). A missing browser fails the test rather
than skipping it, so CI cannot pass without having looked at the page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from alignlab.eval.report import write_report
from alignlab.registry import Registry

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


def _chromium() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path is None:
        pytest.fail(
            f"{CHROMIUM} is missing: run `make test-deps` (apt-get install -y chromium) to render the "
            "report in a headless browser"
        )
    return path


def _browse(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _registry(root: Path) -> Registry:
    """base -> sft -> ppo with a reward model beside, metrics as the stages store them; no training."""
    reg = Registry(root)
    with reg.publishing("base", kind="model", stage="tiny_base", parents=["hf:org/tiny"]) as pub:
        pub.metrics.update(gold_score=0.12, gold_accuracy=0.0, parameters=900_000)
    base = pub.artifact
    with reg.publishing("sft", kind="model", stage="sft", parents=[base], inputs={"model": base.ref}) as pub:
        pub.metrics.update(
            gold_score=0.55, gold_accuracy=0.31, train_loss_curve=[[s, 4.0 / s + 1.0] for s in range(1, 21)]
        )
    sft = pub.artifact
    with reg.publishing("rm", kind="reward_model", stage="reward_model", parents=[sft]) as pub:
        pub.metrics.update(accuracy=0.8, train_loss_curve=[[s, 0.7 - s / 100] for s in range(1, 11)])
    rm = pub.artifact
    history = [
        {
            "step": s,
            "reward_score": 0.3 * s,
            "kl": 0.2 * s,
            "kl_coef": 0.05,
            "entropy": 2.0 - s / 20,
            "gold_score": 0.55 + 0.03 * s - 0.003 * s * s if s % 2 == 0 else None,
        }
        for s in range(1, 17)
    ]
    with reg.publishing(
        "ppo", kind="model", stage="ppo", parents=[sft, rm], inputs={"model": sft.ref, "reward": rm.ref}
    ) as pub:
        pub.metrics.update(
            gold_score=0.58,
            gold_accuracy=0.35,
            kl_to_reference=3.2,
            history=history,
            best_of_n={"1": 0.4, "2": 0.5, "4": 0.56},
            best_of_n_gold={"1": 0.5, "2": 0.53, "4": 0.54},
        )
    reg.add_metrics(
        "ppo", {"win_rate": 0.64, "win_rate_opponent": "sft:v1", "win_rate_judge": "gold"}, "eval.winrate"
    )
    return reg


def test_report_renders_in_chromium_with_all_its_plots(tmp_path: Path) -> None:
    page = write_report(_registry(tmp_path / "reg"), "ppo", tmp_path / "report")
    images = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert len(images) >= 6  # chain, sft loss, rm loss, PPO history, over-optimisation, best of N

    dom = _browse(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img ") == len(images)
    marker = re.search(r'data-plots="(\d+)/(\d+)"', dom.stdout)
    assert marker is not None, "the page's load script did not run:\n" + dom.stdout[:2000]
    loaded, total = int(marker[1]), int(marker[2])
    assert total == len(images) and loaded == total, f"only {loaded} of {total} plots loaded in the browser"
    assert f"{total} of {total} plots loaded" in dom.stdout

    shot = tmp_path / "page.png"
    result = _browse(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,2400")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50, "the screenshot is (nearly) blank"
