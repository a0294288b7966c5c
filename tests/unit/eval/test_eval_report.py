"""The HTML report: lineage, metrics, plots written beside the page and referenced relatively."""

import re
from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.eval.report import default_report_dir, write_report
from alignlab.registry import Registry


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "reg")
    with reg.publishing("base", kind="model", stage="tiny_base", parents=["hf:org/tiny"]) as pub:
        pub.metrics.update(gold_score=0.1, gold_accuracy=0.0)
    with reg.publishing(
        "sft",
        kind="model",
        stage="sft",
        parents=[pub.artifact],
        inputs={"model": "base"},
        config={"train": {"lr": 1e-3}},
    ) as pub:
        pub.metrics.update(gold_score=0.5, train_loss_curve=[[1, 3.0], [2, 2.0], [3, 1.5]], note="<b>&</b>")
    sft = pub.artifact
    with reg.publishing("ppo", kind="model", stage="ppo", parents=[sft], inputs={"model": sft.ref}) as pub:
        pub.metrics.update(
            gold_score=0.6,
            kl_to_reference=2.0,
            history=[
                {"step": s, "reward_score": s / 2, "kl": s / 4, "gold_score": 0.5 + s / 50 if s % 2 else None}
                for s in range(1, 9)
            ],
        )
    reg.add_metrics(
        "ppo",
        {"bon_eval_reward": {"1": 0.2, "2": 0.4, "4": 0.5}, "mc_per_subject": {"a": 1}},
        "eval.best_of_n",
    )
    return reg


def test_report_writes_the_page_and_its_plots_side_by_side(reg: Registry, tmp_path: Path) -> None:
    page = write_report(reg, "ppo", tmp_path / "out")
    assert page == tmp_path / "out" / "index.html"
    text = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(sources) == sorted(
        {
            "chain-gold.png",
            "sft-v1-loss.png",
            "ppo-v1-history.png",
            "ppo-v1-overopt.png",
            "ppo-v1-best-of-n.png",
        }
    )
    for name in sources:
        assert "/" not in name and (page.parent / name).read_bytes()[:4] == b"\x89PNG"
    for ref in ("ppo:v1", "sft:v1", "base:v1", "hf:org/tiny"):  # the whole lineage
        assert ref in text
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in text and "<b>&</b>" not in text  # metric values are escaped
    assert "eval.best_of_n" in text  # metrics added after publishing are listed with their source
    assert "&quot;mc_per_subject&quot;" in text  # other structured metrics, as JSON


def test_default_folder_is_outside_the_artifact(reg: Registry, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    art = reg.get("sft")
    assert default_report_dir(art) == Path("reports/sft-v1")
    page = write_report(reg, "sft")
    assert page.resolve() == (tmp_path / "reports" / "sft-v1" / "index.html").resolve()
    assert not list(art.path.glob("*.png"))
    with pytest.raises(ConfigError, match="not a registry artifact"):
        write_report(reg, str(tmp_path))
