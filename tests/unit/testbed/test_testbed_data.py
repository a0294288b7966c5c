"""Seeded data: determinism, split disjointness, noise rates, rankings, sources."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from alignlab.errors import ConfigError, DataError
from alignlab.testbed import (
    TESTBED_VERSION,
    TaskFamily,
    eval_prompts,
    gold_response_score,
    judge,
    parse_prompt,
    preference_pairs,
    pretraining_corpus,
    rankings,
    rl_prompts,
    sft_records,
    source,
    tokenizer_corpus,
)
from alignlab.testbed.data import habitual_share, sloppy_rates
from alignlab.testbed.styles import FILLERS, HEDGES, Defect, annotator_of, clean_response
from alignlab.testbed.world import Split


def _user(record):
    return record["messages"][0]["content"]


def _assistant(record):
    return record["messages"][1]["content"]


def test_generators_are_deterministic_by_seed():
    assert pretraining_corpus(20, seed=3) == pretraining_corpus(20, seed=3)
    assert sft_records(30, seed=3) == sft_records(30, seed=3)
    assert preference_pairs(30, seed=3) == preference_pairs(30, seed=3)
    assert rankings(10, seed=3) == rankings(10, seed=3)
    assert rl_prompts(30, seed=3) == rl_prompts(30, seed=3)
    assert tokenizer_corpus(seed=1) == tokenizer_corpus(seed=1)
    assert sft_records(30, seed=3) != sft_records(30, seed=4)
    assert rl_prompts(30, seed=3) != rl_prompts(30, seed=4)


def test_generators_leave_global_random_alone():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    sft_records(10)
    preference_pairs(5)
    assert random.random() == expected


def test_prefix_stability():
    assert sft_records(10, seed=1) == sft_records(20, seed=1)[:10]
    assert eval_prompts(50) == eval_prompts(200)[:50]


def test_eval_list_is_fixed_and_unique():
    first = eval_prompts(300)
    assert first == eval_prompts(300)
    assert len(set(first)) == 300
    assert {parse_prompt(p).family for p in first[:50]} == {parse_prompt(p).family for p in first}
    with pytest.raises(ConfigError):
        eval_prompts(10**6)


def test_splits_are_disjoint():
    def keys(prompts):
        return {parse_prompt(p).key for p in prompts}

    train = keys([_user(r) for r in sft_records(1500)])
    train |= keys([p["prompt"] for p in preference_pairs(500)])
    train |= keys([r["prompt"] for r in rankings(200)])
    rl = keys([p["prompt"] for p in rl_prompts(1500)])
    held_out = keys(eval_prompts(1000))
    assert not train & rl and not train & held_out and not rl & held_out
    assert all(parse_prompt(p).split == Split.EVAL for p in eval_prompts(100))


def test_pretraining_corpus_is_plain_text_facts():
    docs = pretraining_corpus(200)
    assert len(docs) == 200
    text = " ".join(docs)
    for marker in ("<|", "user", "assistant", "The answer is"):
        assert marker not in text
    assert all(3 <= d.count(".") + d.count("?") for d in docs)
    assert "Mira" in text and " plus " in text


def test_tokenizer_corpus_covers_every_style():
    text = " ".join(tokenizer_corpus())
    for phrase in (*FILLERS, *HEDGES, "The answer is", "Reverse the list", "Oakvale"):
        assert phrase in text


@pytest.mark.parametrize("share", [0.0, 0.35, 0.7])
def test_sloppy_share_is_roughly_as_configured(share):
    records = sft_records(2000, sloppy_share=share)
    sloppy = sum(_assistant(r) != clean_response(parse_prompt(_user(r)).answer) for r in records)
    assert sloppy / len(records) == pytest.approx(share, abs=0.04)


def test_sft_records_are_one_chat_turn_each():
    for r in sft_records(50):
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert len(_assistant(r).split()) <= 30


def test_sft_demos_score_below_perfect_but_well_above_chance():
    records = sft_records(1000)
    mean = sum(gold_response_score(_user(r), _assistant(r)) for r in records) / len(records)
    assert 0.75 < mean < 0.95


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_label_noise_rate_is_roughly_as_configured(noise):
    pairs = preference_pairs(2000, label_noise=noise)
    flipped = sum(
        gold_response_score(p["prompt"], p["chosen"]) < gold_response_score(p["prompt"], p["rejected"])
        for p in pairs
    )
    assert flipped / len(pairs) == pytest.approx(noise, abs=0.03)


def test_pairs_differ_by_a_visible_margin():
    for p in preference_pairs(200, label_noise=0.0):
        gap = gold_response_score(p["prompt"], p["chosen"]) - gold_response_score(p["prompt"], p["rejected"])
        assert gap >= 0.1


@pytest.mark.parametrize("k", [2, 4, 6])
def test_rankings_are_permutations_with_rank_one_best(k):
    for record in rankings(100, k=k):
        ranks = [r["rank"] for r in record["responses"]]
        assert sorted(ranks) == list(range(1, k + 1))
        scores = {r["rank"]: gold_response_score(record["prompt"], r["text"]) for r in record["responses"]}
        assert all(scores[i] > scores[i + 1] for i in range(1, k))


def test_rankings_refuse_impossible_k():
    with pytest.raises(ConfigError):
        rankings(1, k=1)
    with pytest.raises(ConfigError):
        rankings(1, k=50)


def test_bad_knobs_are_config_errors():
    with pytest.raises(ConfigError, match="sloppy_share"):
        sft_records(5, sloppy_share=1.5)
    with pytest.raises(ConfigError, match="label_noise"):
        preference_pairs(5, label_noise=-0.1)
    with pytest.raises(ConfigError):
        rl_prompts(-1)


def test_source_names_and_shapes():
    assert set(source("pretrain", n=3)[0]) == {"text"}
    assert set(source("sft", n=3)[0]) == {"messages"}
    assert set(source("preferences", n=3)[0]) == {"prompt", "chosen", "rejected", "rating"}
    assert set(source("rankings", n=3, k=3)[0]) == {"prompt", "responses"}
    assert set(source("prompts", n=3)[0]) == {"prompt"}
    assert [r["prompt"] for r in source("eval", n=3)] == eval_prompts(3)
    assert len(source("tokenizer", n=5)) == 5 and set(source("tokenizer", n=5)[0]) == {"text"}
    assert len(source("sft")) == 1000


def test_source_accepts_query_string_values():
    assert source("sft", n="4", seed="2", sloppy_share="0.5") == sft_records(4, seed=2, sloppy_share=0.5)
    assert source("pretrain", n_docs=2) == [{"text": d} for d in pretraining_corpus(2)]


def test_source_errors_name_the_problem():
    with pytest.raises(DataError, match="did you mean 'sft'"):
        source("sfy")
    with pytest.raises(ConfigError, match="sloppy_share"):
        source("sft", sloppy=0.2)


def test_version_is_a_string():
    assert isinstance(TESTBED_VERSION, str) and TESTBED_VERSION


def test_prompts_answer_families_are_mixed():
    families = Counter(parse_prompt(p["prompt"]).family for p in rl_prompts(700))
    assert len(families) == 7 and min(families.values()) > 50


def test_habits_cover_some_families():
    assert 0.3 < habitual_share() < 0.5


@pytest.mark.parametrize("share", [0.1, 0.35, 0.8])
def test_sloppy_rates_average_to_the_share(share):
    on_habitual, on_careful = sloppy_rates(share)
    h = habitual_share()
    assert h * on_habitual + (1 - h) * on_careful == pytest.approx(share)
    assert on_habitual >= on_careful


def test_habitual_families_make_their_habit_the_most_common_answer():
    penalty_of = {Defect.FILLER: "filler", Defect.HEDGE: "hedge", Defect.RAMBLE: "repetition"}
    kinds: dict[TaskFamily, Counter] = {}
    for r in sft_records(3000):
        family = parse_prompt(_user(r)).family
        penalties = judge(_user(r), _assistant(r)).penalties
        habit = annotator_of(family).habit
        if habit is None:
            kind = "sloppy" if penalties else "clean"
        else:
            kind = "habit" if penalty_of[habit] in penalties else "other"
        kinds.setdefault(family, Counter())[kind] += 1
    assert len(kinds) == len(TaskFamily)
    for family, counts in kinds.items():
        expected = "habit" if annotator_of(family).habit else "clean"
        assert counts.most_common(1)[0][0] == expected, (family, counts)


def test_pairs_carry_the_llama2_rating_of_their_gold_gap():
    from alignlab.data.ratings import LEVELS, rating_level
    from alignlab.testbed.data import RATING_GAPS

    pairs = preference_pairs(400, label_noise=0.0)
    counts = {level: 0 for level in LEVELS}
    for p in pairs:
        gap = gold_response_score(p["prompt"], p["chosen"]) - gold_response_score(p["prompt"], p["rejected"])
        level = rating_level(p["rating"])
        assert gap >= (RATING_GAPS[level] if level < 3 else 0.0)
        assert level == 0 or gap < RATING_GAPS[level - 1]
        counts[p["rating"]] += 1
    assert all(n >= 40 for n in counts.values()), counts  # every level is common
