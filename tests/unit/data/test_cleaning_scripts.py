"""Cleaning that works on scripts written without spaces (issue 18 §3)."""

from __future__ import annotations

from alignlab.data.dedup import (
    ExactDedup,
    ExactDedupSettings,
    NearDedup,
    NearDedupSettings,
    is_spaceless,
    jaccard,
    shingles,
)

ZH = "人工智能是计算机科学的一个分支，它研究如何让机器像人一样学习、推理和解决问题，并在很多领域得到了应用。"
ZH_EDITED = ZH.replace("很多", "许多", 1)[:-1] + "！"  # two characters changed


def test_a_one_character_edit_of_a_chinese_document_is_caught_with_character_shingles():
    words = NearDedup(NearDedupSettings(threshold=0.7, shingle="words"))
    assert words.check(ZH) is None and words.check(ZH_EDITED) is None  # one "word": missed
    for mode in ("chars", "auto"):
        near = NearDedup(NearDedupSettings(threshold=0.7, shingle=mode))
        assert near.check(ZH) is None
        assert near.check(ZH_EDITED)[0] == "near duplicate", mode
    assert (
        jaccard(shingles(ZH, mode="chars"), shingles(ZH_EDITED, mode="chars")) > 0.7
    )  # 0.77: two edits touch 10 of ~50 5-grams


def test_auto_picks_characters_for_chinese_and_japanese_and_words_for_english():
    assert is_spaceless(ZH) and is_spaceless("今日はとても良い天気ですね。散歩に行きましょう。")
    assert not is_spaceless("The quick brown fox jumps over the lazy dog.")
    english = "the quick brown fox jumps over the lazy dog and runs far away into the forest"
    assert (shingles(english, mode="auto") == shingles(english, mode="words")).all()
    near = NearDedup(NearDedupSettings(threshold=0.5))  # auto, English near-dup still works
    assert near.check(english) is None
    assert near.check(english.replace("forest", "woods"))[0] == "near duplicate"


def test_exact_dedup_can_ignore_punctuation_latin_and_cjk():
    plain = ExactDedup()
    assert plain.check("Hello, world!") is None and plain.check("hello world") is None
    loose = ExactDedup(ExactDedupSettings(ignore_punctuation=True))
    assert loose.check("Hello, world!") is None
    assert loose.check("hello world")[0] == "exact duplicate"
    assert loose.check("你好，世界。") is None and loose.check("你好世界")[0] == "exact duplicate"
