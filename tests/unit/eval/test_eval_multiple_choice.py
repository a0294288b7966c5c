"""Few-shot multiple choice: rigged option logits, contextual calibration, scoring by hand."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from alignlab.errors import DataError
from alignlab.eval.multiple_choice import (
    LETTERS,
    TEMPLATES,
    Question,
    evaluate_multiple_choice,
    few_shot_prompt,
    load_questions,
    option_logprobs,
)
from alignlab.models import train_bpe_tokenizer
from alignlab.models.builders import TinySize, build_llama

CORPUS = ["Question: which one? Answer: A", "Answer: B", "Answer: C", "Answer: D", "A. B. C. D. N/A"] * 4


@pytest.fixture(scope="module")
def tok():
    tok = train_bpe_tokenizer(CORPUS, vocab_size=300)
    for letter in "ABCD":  # the rigged model sets the logits of these single tokens
        assert len(tok(f" {letter}", add_special_tokens=False).input_ids) == 1
    return tok


class RiggedLM:
    """Returns chosen logits for the option-letter tokens at the last real position of each row.

    ``logits_for(question_text)`` gives the four letter logits for the question being asked (the
    last question block of the prompt); every other logit is 0.
    """

    training = False

    def __init__(self, tok, logits_for):
        self.tok, self.logits_for = tok, logits_for
        self.letter_ids = [tok(f" {c}", add_special_tokens=False).input_ids[0] for c in "ABCD"]
        self.calls = 0

    def __call__(self, input_ids, attention_mask, **_):
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, len(self.tok))  # (B, T, V)
        for i in range(input_ids.shape[0]):
            end = int(attention_mask[i].sum())
            text = self.tok.decode(input_ids[i, :end])
            asked = text.rsplit("\n\n", 1)[-1].split("\n", 1)[0]
            for letter_id, value in zip(self.letter_ids, self.logits_for(asked)):
                logits[i, end - 1, letter_id] = value
        return SimpleNamespace(logits=logits)


QUESTIONS = [
    Question(f"q{i}", ("w", "x", "y", "z"), answer, "math") for i, answer in enumerate([0, 1, 2, 3, 1, 2])
]


def test_rigged_logits_give_the_expected_accuracy_and_random_baseline(tok):
    picks = {"q0": 0, "q1": 1, "q2": 0, "q3": 3, "q4": 1, "q5": 0}  # q2 and q5 wrong

    def logits_for(q):
        return [5.0 if i == picks[q] else 0.0 for i in range(4)]

    two_way = Question("q6", ("yes", "no"), 1, "logic")
    picks["q6"] = 1
    result = evaluate_multiple_choice(RiggedLM(tok, logits_for), tok, [*QUESTIONS, two_way], shots=2)
    assert result.predictions == [0, 1, 0, 3, 1, 0, 1]
    assert result.accuracy == pytest.approx(5 / 7)
    assert result.random_baseline == pytest.approx((6 * 0.25 + 0.5) / 7)
    assert result.per_subject == {"logic": 1.0, "math": pytest.approx(4 / 6)}
    assert math.isclose(sum(result.probabilities[0]), 1.0, rel_tol=1e-5)


def test_contextual_calibration_removes_a_rigged_bias(tok):
    bias = torch.log(torch.tensor([8.0, 1.0, 1.0, 1.0]))  # the prompt pushes every answer towards A

    def logits_for(q):
        if q == "N/A":
            return bias.tolist()
        truth = torch.full((4,), 0.4 / 3)
        truth[QUESTIONS[int(q[1:])].answer] = 0.6
        return (truth.log() + bias).tolist()

    model = RiggedLM(tok, logits_for)
    result = evaluate_multiple_choice(model, tok, QUESTIONS, shots=1, calibrate_bias=True)
    assert result.accuracy_uncalibrated == pytest.approx(1 / 6)  # only the question whose answer is A
    assert result.accuracy == 1.0 and result.calibrated
    assert result.probabilities[1] == pytest.approx([0.4 / 3, 0.6, 0.4 / 3, 0.4 / 3], abs=1e-5)


def test_prompt_holds_the_shots_with_answers_and_ends_at_the_answer_position():
    q = Question("What is 2 plus 2?", ("3", "4"), 1, "basic_math")
    shot = Question("What is 1 plus 1?", ("2", "5"), 0, "basic_math")
    prompt = few_shot_prompt(q, [shot])
    assert prompt.startswith(
        "The following are multiple choice questions (with answers) about basic math.\n\n"
    )
    assert "What is 1 plus 1?\nA. 2\nB. 5\nAnswer: A\n\n" in prompt
    assert prompt.endswith("What is 2 plus 2?\nA. 3\nB. 4\nAnswer:")


def test_option_scores_match_the_model_by_hand_on_both_paths(tok):
    model = build_llama(
        TinySize(32, 64, 1, 2),
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    contexts = [tok("Question: which one? Answer:").input_ids, tok("Answer:").input_ids]
    single = [[" A", " B"], [" C", " D"]]  # one token each: logits at the answer position
    multi = [[" A", " N/A"], [" C", " which one"]]  # several tokens: whole continuations scored

    def by_hand(ctx, options):
        totals = []
        for option in options:
            ids = tok(option, add_special_tokens=False).input_ids
            lp = torch.log_softmax(model(input_ids=torch.tensor([ctx + ids])).logits[0], dim=-1)
            totals.append(sum(lp[len(ctx) + j - 1, t].item() for j, t in enumerate(ids)))
        return torch.log_softmax(torch.tensor(totals), dim=0).tolist()

    with torch.no_grad():
        for options, batch_size in ((single, 1), (single, 8), (multi, 1), (multi, 8)):  # 8: right padding
            got = option_logprobs(model, tok, contexts, options, batch_size=batch_size)
            for ctx, row, scores in zip(contexts, options, got):
                assert scores.tolist() == pytest.approx(by_hand(ctx, row), abs=1e-4)


def test_load_questions_accepts_letters_and_indices_and_names_bad_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [
        {"question": "a?", "choices": ["x", "y", "z"], "answer": "C", "subject": "s"},
        {"question": "b?", "choices": ["x", "y"], "answer": 0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [(q.answer, q.subject) for q in load_questions(path)] == [(2, "s"), (0, None)]
    path.write_text(
        json.dumps(rows[0]) + "\n" + json.dumps({"question": "c?", "choices": ["x", "y"], "answer": "D"})
    )
    with pytest.raises(DataError, match=r"q\.jsonl:2: answer 'D' is not one of the 2 choices"):
        load_questions(path)
    assert LETTERS[:4] == "ABCD"


# ---- C-Eval / MMLU native rows (issue 18 §4) -------------------------------------------------


def test_c_eval_native_rows_load_from_jsonl_and_csv_with_the_subject_from_the_file_name(tmp_path):
    from alignlab.eval.multiple_choice import load_subject_mapping

    row = {"id": 0, "question": "1+1=?", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "B"}
    (tmp_path / "q.jsonl").write_text(json.dumps({**row, "subject": "math"}, ensure_ascii=False) + "\n")
    (tmp_path / "computer_network_val.csv").write_text(
        "id,question,A,B,C,D,answer,explanation\n0,TCP是哪一层协议？,物理层,数据链路层,网络层,传输层,D,TCP 在传输层。\n",
        encoding="utf-8",
    )
    (tmp_path / "map.json").write_text(
        json.dumps({"computer_network": ["Computer Network", "计算机网络", "STEM"]}, ensure_ascii=False),
        encoding="utf-8",
    )
    [jsonl] = load_questions(tmp_path / "q.jsonl")
    assert (jsonl.choices, jsonl.answer, jsonl.subject) == (("1", "2", "3", "4"), 1, "math")
    mapping = load_subject_mapping(tmp_path / "map.json")
    [csv_q] = load_questions(tmp_path / "computer_network_val.csv", mapping=mapping, chinese_names=True)
    assert (
        load_questions(tmp_path / "computer_network_val.csv", mapping=mapping)[0].subject_name
        == "Computer Network"
    )
    assert csv_q.explanation == "TCP 在传输层。"  # kept through the mapping, for --cot examples
    assert (csv_q.subject, csv_q.category, csv_q.subject_name, csv_q.answer) == (
        "computer_network",
        "STEM",
        "计算机网络",
        3,
    )
    prompt = few_shot_prompt(csv_q, [], TEMPLATES["ceval_zh"])
    assert prompt == (
        "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
        "TCP是哪一层协议？\nA. 物理层\nB. 数据链路层\nC. 网络层\nD. 传输层\n答案："
    )
    (tmp_path / "bad.json").write_text('{"x": [1]}')
    with pytest.raises(DataError, match="bad.json"):
        load_subject_mapping(tmp_path / "bad.json")


def test_a_shot_in_the_chinese_template_has_the_letter_right_after_the_marker():
    from alignlab.eval.multiple_choice import TEMPLATES

    q = Question("2+2=?", ("3", "4"), 1, "math")
    prompt = few_shot_prompt(q, [Question("1+1=?", ("2", "5"), 0, "math")], TEMPLATES["ceval_zh"])
    assert "1+1=?\nA. 2\nB. 5\n答案：A\n\n" in prompt and prompt.endswith("答案：")


def test_accuracy_per_category_beside_per_subject(tok):
    questions = [
        Question("q0", ("w", "x", "y", "z"), 0, "physics", "STEM"),
        Question("q1", ("w", "x", "y", "z"), 1, "math", "STEM"),
        Question("q2", ("w", "x", "y", "z"), 2, "law", "Humanities"),
    ]
    picks = {"q0": 0, "q1": 0, "q2": 2}  # q1 wrong

    def logits_for(q):
        return [5.0 if i == picks[q] else 0.0 for i in range(4)]

    result = evaluate_multiple_choice(RiggedLM(tok, logits_for), tok, questions, shots=0)
    assert result.per_category == {"Humanities": 1.0, "STEM": 0.5}
    assert result.to_metrics()["mc_per_category"] == {"Humanities": 1.0, "STEM": 0.5}
    with pytest.raises(Exception, match="template"):
        evaluate_multiple_choice(RiggedLM(tok, logits_for), tok, questions, shots=0, template="gsm8k")


# ---- chain-of-thought few-shot (issue 18 §4) --------------------------------------------------


class CannedGenerator:
    """Answers each prompt with the canned reasoning for the question it ends with."""

    training = False

    def __init__(self, tok, replies):
        self.tok, self.replies, self.prompts = tok, replies, []

    def parameters(self):
        return iter([torch.zeros(1)])

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        rows = []
        for i in range(input_ids.shape[0]):
            text = self.tok.decode(input_ids[i][attention_mask[i].bool()], skip_special_tokens=True)
            self.prompts.append(text)
            asked = text.rsplit("\n\n", 1)[-1].split("\n", 1)[0]
            new = self.tok(self.replies[asked], add_special_tokens=False).input_ids
            rows.append(torch.cat([input_ids[i], torch.tensor(new)]))
        width = max(len(r) for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=0) for r in rows])


def test_chain_of_thought_reads_the_answer_after_the_reasoning(tok):
    from alignlab.eval.multiple_choice import evaluate_multiple_choice_cot

    dev = [Question("d1", ("w", "x"), 1, "math", explanation="x is right because of y.")]
    questions = [Question("q0", ("w", "x", "y"), 2, "math"), Question("q1", ("w", "x", "y"), 0, "math")]
    replies = {
        # the reasoning mentions A first; the conclusion says C; then the model starts a new question
        "q0": " A looks tempting, but no. So the answer is C.\n\nq9\nA. w\nAnswer: Let's think step by step. So the answer is B.",
        "q1": " I cannot tell.",  # names no option: wrong and counted
    }
    model = CannedGenerator(tok, replies)
    result = evaluate_multiple_choice_cot(model, tok, questions, shots=1, shot_pool=dev)
    assert result.predictions == [2, -1] and result.accuracy == 0.5 and result.unparsed == 1
    assert result.cot and result.to_metrics()["mc_unparsed"] == 1
    prompt = model.prompts[0]
    assert (
        "d1\nA. w\nB. x\nAnswer: Let's think step by step.\nx is right because of y.\nSo the answer is B.\n\n"
        in prompt
    )
    assert prompt.endswith("q0\nA. w\nB. x\nC. y\nAnswer: Let's think step by step.")


def test_chain_of_thought_in_chinese_and_examples_without_explanations():
    from alignlab.eval.multiple_choice import read_cot_answer

    assert read_cot_answer("因为……所以答案是B。", TEMPLATES["ceval_zh"], 4) == 1
    assert read_cot_answer("so the answer is E.", TEMPLATES["mmlu"], 4) is None  # not an option
    from alignlab.eval.multiple_choice import evaluate_multiple_choice_cot

    with pytest.raises(DataError, match="explanation"):
        evaluate_multiple_choice_cot(
            None, None, [Question("q", ("a", "b"), 0)], shots=1, shot_pool=[Question("d", ("a", "b"), 1)]
        )
