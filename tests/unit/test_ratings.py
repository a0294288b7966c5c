"""LLaMA-2 ratings and margins (issue 18 §2)."""

from __future__ import annotations

import json

import pytest

from alignlab.data.loading import load_records
from alignlab.data.ratings import MARGIN_PRESETS, margin_for, margins_table, rating_level
from alignlab.errors import ConfigError, DataError
from alignlab.stages.reward import RewardModel
from alignlab.stages.reward_data import rankings_from_records


def test_ratings_read_phrases_and_levels_and_refuse_the_rest():
    assert [rating_level(x) for x in ("Significantly  better", "better", "slightly_better", "unsure", 3)] == [
        0,
        1,
        2,
        3,
        3,
    ]
    for bad in ("meh", 4, -1, True, 1.5):
        with pytest.raises(ConfigError, match="not a LLaMA-2 rating"):
            rating_level(bad)


def test_the_presets_are_llama2s_table_27():
    assert margins_table("small") == pytest.approx((1.0, 2 / 3, 1 / 3, 0.0))
    assert margins_table("large") == (3.0, 2.0, 1.0, 0.0)
    assert margins_table([2, 1, 0.5, 0]) == (2.0, 1.0, 0.5, 0.0)
    assert margins_table(None) is None and margins_table("none") is None
    assert margin_for("better", MARGIN_PRESETS["large"]) == 2.0
    with pytest.raises(ConfigError, match="loss.rating_margins"):
        RewardModel({"loss": {"rating_margins": "huge"}})
    with pytest.raises(ConfigError, match="four margins"):
        RewardModel({"loss": {"rating_margins": [1, 2]}})


def test_a_rating_in_the_data_becomes_the_pairs_margin_and_an_explicit_margin_wins(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b", "rating": "significantly better"},
        {"prompt": "q2", "chosen": "a", "rejected": "b", "rating": 2, "margin": 0.25},
        {"prompt": "q3", "chosen": "a", "rejected": "b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(str(path), kind="preference").records
    assert [r.get("rating") for r in records] == ["significantly better", "slightly better", None]
    rankings, _ = rankings_from_records(records, "preference", rating_margins="large")
    assert [r.margins for r in rankings] == [[3.0], [0.25], None]
    assert [r.rating for r in rankings] == [0, 2, None]
    plain, _ = rankings_from_records(records, "preference")  # ratings unused without a table
    assert [r.margins for r in plain] == [None, [0.25], None]


def test_a_bad_rating_names_the_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "rating": "meh"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:1.*field 'rating'"):
        load_records(str(path), kind="preference")
