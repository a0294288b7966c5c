import itertools
import random

import pytest

from alignlab.errors import ConfigError, ReferenceNotFound
from alignlab.eval.best_of_n import best_of_n_curve, curve_sizes, expected_max, plot_best_of_n
from alignlab.rewards import function_source, resolve_reward
from alignlab.stages.rejection import select_best


def brute_force(scores, n):
    subsets = list(itertools.combinations(scores, n))
    return sum(max(s) for s in subsets) / len(subsets)


def test_curve_sizes_are_powers_of_two_then_k():
    assert curve_sizes(1) == [1]
    assert curve_sizes(4) == [1, 2, 4]
    assert curve_sizes(6) == [1, 2, 4, 6]
    with pytest.raises(ConfigError):
        curve_sizes(0)


def test_hand_worked_values():
    # one prompt, scores 1 2 3: best of 1 = mean 2; best of 2 = (2 + 3 + 3) / 3; best of 3 = 3
    assert expected_max([3.0, 1.0, 2.0], 1) == pytest.approx(2.0)
    assert expected_max([3.0, 1.0, 2.0], 2) == pytest.approx(8 / 3)
    assert expected_max([3.0, 1.0, 2.0], 3) == pytest.approx(3.0)
    # two prompts averaged; ties count once per subset
    assert best_of_n_curve([[0.0, 1.0], [0.5, 0.5]]) == pytest.approx({1: 0.5, 2: 0.75})


def test_matches_brute_force_over_subsets_and_is_monotone():
    rng = random.Random(0)
    scores = [[rng.random() for _ in range(8)] for _ in range(5)]
    curve = best_of_n_curve(scores, sizes=range(1, 9))
    for n, value in curve.items():
        assert value == pytest.approx(sum(brute_force(row, n) for row in scores) / 5)
    values = [curve[n] for n in sorted(curve)]
    assert values == sorted(values)
    assert curve[1] == pytest.approx(sum(map(sum, scores)) / 40)  # mean score
    assert curve[8] == pytest.approx(sum(map(max, scores)) / 5)  # best of all


def test_bad_input():
    with pytest.raises(ConfigError):
        best_of_n_curve([[1.0, 2.0], [1.0]])
    with pytest.raises(ConfigError):
        expected_max([1.0, 2.0], 3)


def test_plot_writes_a_png(tmp_path):
    path = plot_best_of_n(
        {"reward": {1: 0.2, 2: 0.3, 4: 0.35}, "gold": {"1": 0.1, "2": 0.2, "4": 0.2}}, tmp_path / "curve.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_best_keeps_the_top_sample_above_the_threshold():
    prompts = [[{"role": "user", "content": "a?"}], [{"role": "user", "content": "b?"}]]
    samples = [["x", "y", "z"], ["u", "v", "w"]]
    rewards = [[0.1, 0.9, 0.9], [0.2, 0.3, 0.1]]
    rows = select_best(prompts, samples, rewards)
    assert [r["messages"][-1] for r in rows] == [
        {"role": "assistant", "content": "y"},  # first of the tied best
        {"role": "assistant", "content": "v"},
    ]
    assert [r["reward"] for r in rows] == [0.9, 0.3]
    assert len(select_best(prompts, samples, rewards, threshold=0.5)) == 1


def test_a_reward_function_and_its_import_path_are_the_same_source(tmp_path):
    from alignlab.registry import Registry
    from alignlab.testbed import gold_reward_fn

    registry = Registry(tmp_path)
    by_object = resolve_reward(registry, gold_reward_fn)
    by_path = resolve_reward(registry, "alignlab.testbed:gold_reward_fn")
    assert by_object.source == by_path.source == function_source(gold_reward_fn)
    assert by_object.source.source == "py:alignlab.testbed.gold:gold_reward_fn"
    with pytest.raises(ConfigError, match="input 'reward' is required"):
        resolve_reward(registry, None)


def test_a_reward_function_in_a_top_level_module_is_not_taken_for_a_registry_reference(tmp_path, monkeypatch):
    from alignlab.registry import Registry

    (tmp_path / "my_rewards.py").write_text(
        "def score(prompts, responses):\n    return [1.0] * len(responses)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry(tmp_path / "reg")
    resolved = resolve_reward(registry, "my_rewards:score")
    assert resolved.fn is not None and resolved.source.source == "py:my_rewards:score"
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'.*name:v3"):
        resolve_reward(registry, "no_such_module_xyz:score")
    for ref in ("reward:v3", "reward:latest", "reward:3"):  # versions stay registry references
        with pytest.raises(ReferenceNotFound):
            resolve_reward(registry, ref)


def test_a_scorer_declares_what_of_a_chat_it_sees():
    from alignlab.rewards import FunctionScorer, score_chats

    chat = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q?"},
    ]
    seen = {}

    class ChatScorer:
        sees = "chat"

        def __call__(self, prompts, responses):
            seen["chat"] = prompts
            return [0.0] * len(responses)

    score_chats(ChatScorer(), [chat], ["r"])
    score_chats(FunctionScorer(lambda p, r: seen.setdefault("fn", p) and [0.0] * len(r)), [chat], ["r"])
    assert seen["chat"] == [chat] and seen["fn"] == ["q?"]


@pytest.mark.parametrize("engine", ["hf", "vllm", "auto"])
def test_rejection_sampling_takes_an_engine(engine):
    from alignlab.config import load_config, to_dict
    from alignlab.models.engines import EngineKind
    from alignlab.stages.rejection import RejectionSampling, RejectionSamplingConfig, SamplingGroup

    assert SamplingGroup().engine is EngineKind.HF  # the default keeps transformers' generate
    cfg = load_config(RejectionSamplingConfig, {"sampling": {"k": 4, "engine": engine}})
    assert cfg.sampling.engine is EngineKind(engine) and cfg.sampling.k == 4
    assert to_dict(cfg)["sampling"]["engine"] == engine
    assert RejectionSampling({"sampling": {"engine": engine}}).config.sampling.engine == engine
    assert SamplingGroup(engine=engine).engine is EngineKind(engine)  # built in Python, too


def test_rejection_sampling_refuses_an_unknown_engine_naming_the_key():
    from alignlab.stages.rejection import RejectionSampling, SamplingGroup

    with pytest.raises(
        ConfigError, match=r"'sampling\.engine': expected one of 'hf', 'vllm', 'auto', got 'foo'"
    ):
        RejectionSampling({"sampling": {"engine": "foo"}})
    with pytest.raises(ConfigError, match=r"sampling\.engine: 'foo' is not one of hf, vllm, auto"):
        SamplingGroup(engine="foo")


def _recording_generate(calls):
    def generate(model, tokenizer, prompts, **kwargs):
        calls.append((list(prompts), kwargs))
        return [f"{p} #{i}" for i, p in enumerate(prompts)]

    return generate


def test_sample_and_score_samples_in_batches_with_hf_and_in_one_call_with_vllm(monkeypatch):
    import alignlab.models
    import alignlab.models.engines as engines
    from alignlab.eval.best_of_n import sample_and_score

    monkeypatch.setattr(engines, "vllm_unavailable", lambda: None)  # as if vLLM imported here
    prompts = ["a", "b", "c"]
    scorer = lambda p, r: [float(len(x)) for x in r]  # noqa: E731
    results = {}
    for engine in ("hf", "vllm"):
        calls = []
        monkeypatch.setattr(alignlab.models, "generate", _recording_generate(calls))
        settings = dict(k=2, temperature=0.7, max_new_tokens=4, batch_size=4, seed=3)
        results[engine] = sample_and_score(object(), object(), scorer, prompts, **settings, engine=engine)
        assert {kw["engine"] for _, kw in calls} == {engine}
        batches = [rows for rows, _ in calls]
        if engine == "hf":  # two prompts (4 rows) per batch, as before
            assert batches == [["a", "a", "b", "b"], ["c", "c"]]
        else:  # one engine for the whole set, seeded
            assert batches == [["a", "a", "b", "b", "c", "c"]] and calls[0][1]["seed"] == 3
    samples, rewards = results["vllm"]
    assert samples == [["a #0", "a #1"], ["b #2", "b #3"], ["c #4", "c #5"]]
    assert rewards == [[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]]
    assert [len(s) for s in results["hf"][0]] == [2, 2, 2]
