"""Absolute 1-10 grading (FastChat single grading): a fake OpenAI-compatible judge on 127.0.0.1,
the relative score, per-category means, the length-bias check, the local judge's fallback."""

from __future__ import annotations

import json
import re
import socket

import pytest

from alignlab.errors import ConfigError, DataError
from alignlab.eval.grading import (
    EndpointJudge,
    EndpointSettings,
    JudgeError,
    LocalChatJudge,
    grade_answers,
    grading_messages,
    length_bias,
    load_grading_questions,
    parse_judge,
    read_rating,
    spearman,
)


def answer_in(prompt: str) -> str:
    return prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split(
        "\n[The End of Assistant's Answer]", 1
    )[0]


def fake_rating(prompt: str) -> str:
    """A rule judge: 9 for an answer naming Paris, 2 otherwise; 'silent' gets no rating."""
    answer = answer_in(prompt)
    if "silent" in answer:
        return "I cannot decide."
    guided = "[The Start of Reference Answer]" in prompt
    return f"{'Compared with the reference, ' if guided else ''}the answer is fine. Rating: [[{9 if 'Paris' in answer else 2}]]"


def fake_verdict(prompt: str) -> str:
    """A pairwise rule judge that prefers the answer naming Paris, whatever its position."""
    a = prompt.split("[The Start of Assistant A's Answer]\n", 1)[1].split("\n[The End", 1)[0]
    b = prompt.split("[The Start of Assistant B's Answer]\n", 1)[1].split("\n[The End", 1)[0]
    verdict = "A" if "Paris" in a and "Paris" not in b else "B" if "Paris" in b and "Paris" not in a else "C"
    return f"Comparing both. [[{verdict}]]"


def fake_judge(body: dict):
    """Rule judge behind the fake endpoint; the models 'broken' and 'locked' fail as servers do."""
    if body["model"] == "broken":
        return 500, "the judge fell over"
    if body["model"] == "locked":
        return 401, "invalid api key"
    prompt = body["messages"][-1]["content"]
    return fake_verdict(prompt) if "[The Start of Assistant A's Answer]" in prompt else fake_rating(prompt)


@pytest.fixture(scope="module")
def judge_server(fake_chat_server):
    return fake_chat_server(fake_judge)


@pytest.fixture(scope="module")
def server(judge_server):
    return judge_server.url


def endpoint(url: str, model: str = "judge-1", **kw) -> EndpointJudge:
    return EndpointJudge(EndpointSettings(model=model, base_url=url, max_retries=0, timeout=10, **kw))


QUESTIONS = ["Capital of France?", "Capital of France, in one word?", "Where is the Louvre?", "Best pizza?"]
ANSWERS = ["Paris.", "Lyon", "In Paris, on the right bank of the Seine, in a former royal palace.", "silent"]
REFERENCES = ["Paris", "Paris", "Paris", None]
CATEGORIES = ["geo", "geo", "art", "food"]


def test_an_endpoint_judge_grades_against_the_reference_and_reports_every_summary(
    server, judge_server, monkeypatch
):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge_server.seen.clear()
    result = grade_answers(
        endpoint(server, api_key_env="JUDGE_KEY"),
        QUESTIONS,
        ANSWERS,
        references=REFERENCES,
        categories=CATEGORIES,
    )
    assert [it["score"] for it in result.items] == [9.0, 2.0, 9.0, None]
    assert result.failed == 1 and result.items[3]["how"] == "failed"
    assert result.score_mean == pytest.approx(20 / 3)  # the failed grade is left out
    assert result.per_category == {"art": 9.0, "geo": 5.5}
    assert result.items[0]["rationale"].startswith("Compared with the reference")
    # relative score: the candidates (9 + 2 + 9) over the references "Paris" (9 each), reference-free prompt
    assert result.relative_score == pytest.approx(20 / 27)
    assert result.reference_score_mean == 9.0
    assert [it.get("reference_score") for it in result.items] == [9.0, 9.0, 9.0, None]
    assert result.length_spearman == pytest.approx(spearman([1, 1, 13], [9, 2, 9]))
    # what went over the wire: the OpenAI chat API, the key from the environment, temperature 0
    first = judge_server.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["temperature"] == 0.0 and first["body"]["model"] == "judge-1"
    assert len(judge_server.seen) == 4 + 2 * 3  # 4 grades, then 3 candidates + 3 references
    guided = [
        s
        for s in judge_server.seen
        if "[The Start of Reference Answer]" in s["body"]["messages"][-1]["content"]
    ]
    assert len(guided) == 3


def test_relative_can_be_turned_off(server, judge_server):
    judge_server.seen.clear()
    result = grade_answers(
        endpoint(server), QUESTIONS[:2], ANSWERS[:2], references=REFERENCES[:2], relative=False
    )
    assert result.relative_score is None and len(judge_server.seen) == 2


def test_endpoint_errors_name_the_endpoint_and_never_raise_a_client_traceback(server, monkeypatch):
    with pytest.raises(JudgeError, match=r"answered HTTP 500 for model 'broken': the judge fell over"):
        grade_answers(endpoint(server, "broken"), ["q"], ["a"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeError, match=r"HTTP 401 .* \(is \$OPENAI_API_KEY set\?\)"):
        grade_answers(endpoint(server, "locked"), ["q"], ["a"])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeError, match=re.escape(f"endpoint {dead}: cannot connect")):
        grade_answers(endpoint(dead), ["q"], ["a"])
    with pytest.raises(ConfigError, match="must start with http"):
        EndpointJudge(EndpointSettings(model="m", base_url="127.0.0.1:8000"))


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("Rating: [[8]]", 8.0),
        ("[[7.5]] overall", 7.5),
        ("score [6]", 6.0),
        ("Rating: 8", None),
        ("[[11]]", None),
    ],
)
def test_the_rating_is_read_with_fastchats_patterns(text, rating):
    assert read_rating(text) == rating


def test_the_length_bias_check_by_hand():
    answers = ["a", "a b", "a b c", "a b c d"]
    assert length_bias(answers, [1.0, 2.0, 3.0, 4.0]) == (pytest.approx(1.0), 2.0)  # longer is rated higher
    assert length_bias(answers, [4.0, 3.0, 2.0, 1.0]) == (pytest.approx(-1.0), -2.0)
    assert spearman([1, 2, 3], [5, 5, 5]) is None  # a constant has no rank correlation


def test_the_prompts_are_fastchats_single_and_reference_guided_forms():
    plain = grading_messages("Q?", "A.")[-1]["content"]
    guided = grading_messages("Q?", "A.", "R.")[-1]["content"]
    assert "[Question]\nQ?" in plain and "Reference Answer" not in plain
    assert "[The Start of Reference Answer]\nR.\n[The End of Reference Answer]" in guided
    assert "Rating: [[5]]" in plain and "correctness and helpfulness" in guided


def test_questions_load_in_our_form_and_mt_benchs(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [
        {"question": "2+2?", "reference": "4", "category": "math"},
        {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now in French."]},
        {"question_id": 111, "category": "math", "turns": ["3+3?"], "reference": ["6", "-"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    loaded = load_grading_questions(str(path))
    assert [(q.question, q.reference, q.category) for q in loaded] == [
        ("2+2?", "4", "math"),
        ("Write a haiku.", None, "writing"),
        ("3+3?", "6", "math"),
    ]
    path.write_text('{"question": "ok"}\n{"category": "x"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:2: field 'question'"):
        load_grading_questions(str(path))
    path.write_text('{"question": "ok", "reference": 4}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:1: field 'reference' must be a string, got int"):
        load_grading_questions(str(path))


def test_a_local_judge_falls_back_to_its_rating_probabilities(tiny_lm):
    folder = tiny_lm(["Rating: [[5]] the answer is fine"], "judge")
    judge = parse_judge(f"llm:{folder}")
    assert isinstance(judge, LocalChatJudge) and judge.name == f"llm:{folder}"
    judge.max_new_tokens = 8
    result = grade_answers(judge, ["2+2?", "3+3?"], ["4", "7"], relative=False)
    assert all(it["how"] in {"parsed", "probabilities"} for it in result.items)
    assert all(1.0 <= it["score"] <= 10.0 for it in result.items) and result.failed == 0
    with pytest.raises(ConfigError, match="write llm:MODEL_REF"):
        parse_judge("gpt-4o")


def _cli(registry_root, *argv: str) -> int:
    import argparse

    from alignlab.commands import eval as eval_cmd

    parser = argparse.ArgumentParser(prog="alignlab")
    eval_cmd.register(parser.add_subparsers())
    args = parser.parse_args([*argv, "--registry", str(registry_root)])
    return args.func(args)


def test_eval_grade_on_the_command_line_grades_a_policy_and_stores_the_result(
    server, tmp_path, tiny_lm, capsys
):
    import shutil

    from alignlab.registry import Registry

    registry = Registry(tmp_path / "registry")
    folder = tiny_lm(["Paris is the capital of France."], "policy")
    with registry.publishing("policy", kind="model", stage="test", parents=["hf:none"]) as pub:
        shutil.copytree(folder, pub.dir, dirs_exist_ok=True)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps(
            {"question": "Capital of France?", "reference": "Paris", "category": "geo", "answer": "Paris"}
        )
        + "\n"
        + json.dumps({"question": "Best pizza?", "category": "food", "answer": "Lyon"})
        + "\n"
    )
    judge = ["--judge", "openai:judge-1", "--judge-url", server]
    out_file = tmp_path / "grades.jsonl"
    assert (
        _cli(
            registry.root,
            "eval",
            "grade",
            "policy",
            "--questions",
            str(questions),
            *judge,
            "--max-new-tokens",
            "4",
            "--output",
            str(out_file),
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "graded by openai:judge-1@" in printed and "relative score" in printed
    stored = registry.get("policy").metrics
    assert stored["grade_n"] == 2 and 1.0 <= stored["grade_mean"] <= 9.0
    assert set(stored["grade_per_category"]) == {"geo", "food"}
    assert len(out_file.read_text().splitlines()) == 2
    # '-': the file's own answers, nothing stored
    assert _cli(registry.root, "eval", "grade", "-", "--questions", str(questions), *judge, "--json") == 0
    result = json.loads(capsys.readouterr().out)["result"]
    assert [it["score"] for it in result["items"]] == [9.0, 2.0]
    assert result["per_category"] == {"food": 2.0, "geo": 9.0} and result["relative_score"] == 1.0


def test_the_endpoint_gives_fastchats_pairwise_verdict_in_both_orders_for_the_win_rate(server, judge_server):
    from alignlab.eval.winrate import JudgeKind, JudgeSpec, judge_responses

    assert JudgeSpec.parse("openai:judge-1").kind is JudgeKind.ENDPOINT and JudgeKind.ENDPOINT.pairwise
    judge_server.seen.clear()
    result = judge_responses(
        "openai:judge-1",
        ["Capital?", "Capital?", "Capital?"],
        ["Paris", "Lyon", "Lyon"],
        ["Lyon", "Paris", "Nice"],
        endpoint={"base_url": server, "max_retries": 0},
    )
    assert result.preferences == (1.0, 0.0, 0.5)
    assert (result.wins, result.losses, result.ties) == (1, 1, 1) and result.win_rate == 0.5
    assert result.position_bias == 0.0 and result.judge == "openai:judge-1"
    assert len(judge_server.seen) == 6  # each pair in both orders
