"""Reward components, user functions, the reward-model slot and the weighted combination."""

import math

import pytest

from megatron_align.rewards import RewardConfigError, build_reward, register_scorer, unregister_scorer
from megatron_align.rewards.extractors import get_extractor


@pytest.mark.parametrize("spec,text,want", [
    ("boxed", r"so \boxed{\frac{1}{2}} and \boxed{7}", "7"),
    ("boxed", r"x = \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    ("boxed", r"\boxed{unclosed", None),
    ("last_number", "first 3, then 1,234.5 apples", "1234.5"),
    ("last_number", "no digits", None),
    ("after:Answer:", "Answer: 5\nthinking...\nAnswer: 12 \nbye", " 12 "),
    ("regex:#### (\\S+)", "a #### 4 b #### 9", "9"),
    ("last_line", "a\nb\n\n", "b"),
])
def test_extractors(spec, text, want):
    assert get_extractor(spec)(text) == want


def test_unknown_extractor_is_a_config_error():
    with pytest.raises(RewardConfigError, match=r"rl.rewards\[0\]: exact_match.extractor: unknown extractor 'nope'"):
        build_reward([{"type": "exact_match", "params": {"extractor": "nope"}}])


def _one(spec, response, sample=None, prompt="p"):
    res = build_reward([spec])([prompt], [response], [sample or {}])
    return res.total[0], res


def test_exact_match():
    spec = {"type": "exact_match", "params": {"extractor": "last_number"}}
    assert _one(spec, "it is 3.0", {"answer": "3"})[0] == 1.0
    assert _one(spec, "it is 3.01", {"answer": "3"})[0] == 0.0
    assert _one(spec, "it is 1,000", {"answer": 1000})[0] == 1.0
    assert _one(spec, "no number", {"answer": "3"})[0] == 0.0
    words = {"type": "exact_match", "params": {"extractor": "after:Answer:"}}
    assert _one(words, "Answer:  Paris ", {"answer": ["paris", "Paris, France"]})[0] == 1.0
    case = {"type": "exact_match", "params": {"extractor": "after:Answer:", "case_sensitive": True}}
    assert _one(case, "Answer: paris", {"answer": "Paris"})[0] == 0.0


def test_format_regex():
    spec = {"type": "format", "params": {"pattern": r"<think>.*</think>\s*<answer>.*</answer>"}}
    assert _one(spec, "<think>a\nb</think>\n<answer>4</answer>")[0] == 1.0
    assert _one(spec, "x <think>a</think><answer>4</answer>")[0] == 0.0  # fullmatch
    search = {"type": "format", "params": {"pattern": "<answer>", "fullmatch": False}}
    assert _one(search, "x <answer>4</answer>")[0] == 1.0
    per_sample = {"type": "format", "params": {"pattern_field": "fmt", "fullmatch": False}}
    assert _one(per_sample, "- a\n- b", {"fmt": r"^- "})[0] == 1.0
    with pytest.raises(RewardConfigError, match="invalid regular expression"):
        build_reward([{"type": "format", "params": {"pattern": "("}}])
    with pytest.raises(RewardConfigError, match="exactly one of"):
        build_reward([{"type": "format", "params": {}}])


def test_length_bounds():
    spec = {"type": "length", "params": {"unit": "words", "min": 2, "max": 4}}
    assert [_one(spec, t)[0] for t in ("one", "one two", "a b c d", "a b c d e")] == [0.0, 1.0, 1.0, 0.0]
    per_sample = {"type": "length", "params": {"unit": "chars", "max_field": "max_chars"}}
    assert _one(per_sample, "abcdef", {"max_chars": 6})[0] == 1.0
    assert _one(per_sample, "abcdefg", {"max_chars": 6})[0] == 0.0
    with pytest.raises(RewardConfigError, match="min=5 > max=2"):
        build_reward([{"type": "length", "params": {"min": 5, "max": 2}}])
    with pytest.raises(RewardConfigError, match=r"length.unit: 'pages'"):
        build_reward([{"type": "length", "params": {"unit": "pages", "max": 2}}])


def test_keywords():
    spec = {"type": "keywords", "params": {"include": ["Apple", "pear"], "exclude": ["banana"]}}
    assert _one(spec, "apple and PEAR")[0] == 1.0
    assert _one(spec, "apple and banana")[0] == pytest.approx(1 / 3)
    strict = {"type": "keywords", "params": {"include": ["apple"], "exclude": ["banana"], "mode": "all"}}
    assert _one(strict, "apple banana")[0] == 0.0
    per_sample = {"type": "keywords", "params": {"include_field": "must", "exclude_field": "never"}}
    assert _one(per_sample, "red fox", {"must": ["fox", "red"], "never": "dog"})[0] == 1.0
    assert _one(per_sample, "red dog", {"must": ["fox", "red"], "never": "dog"})[0] == pytest.approx(1 / 3)


USER_FILE = '''
import math
def score(prompt, response, sample):
    return len(response) / 10 + sample.get("bonus", 0)
def nan(prompt, response, sample):
    return math.nan if "x" in response else 1.0
def boom(prompt, response, sample):
    if "x" in response:
        raise RuntimeError("cannot parse")
    return 2.0
def text(prompt, response, sample):
    return "high"
def two_args(prompt, response):
    return 1.0
NOT_CALLABLE = 3
'''


@pytest.fixture
def user_file(tmp_path):
    p = tmp_path / "my_rewards.py"
    p.write_text(USER_FILE)
    return tmp_path, p


def test_user_function(user_file):
    base, path = user_file
    r = build_reward([{"type": "function", "params": {"path": f"{path}:score"}}])
    assert r(["p"], ["abcd"], [{"bonus": 1}]).total == [pytest.approx(1.4)]
    rel = build_reward([{"type": "function", "params": {"path": "my_rewards.py:score"}}], base_dir=str(base))
    assert rel(["p"], ["ab"], [{}]).total == [pytest.approx(0.2)]


@pytest.mark.parametrize("spec,msg", [
    ("missing.py:score", "file .*missing.py does not exist"),
    ("{p}:nope", "defines no 'nope'"),
    ("{p}:NOT_CALLABLE", "is not callable"),
    ("{p}:two_args", r"cannot be called as two_args\(prompt, response, sample\)"),
    ("{p}", "expected path/to/file.py:function_name"),
])
def test_user_function_errors_before_any_rollout(user_file, tmp_path, spec, msg):
    _, path = user_file
    with pytest.raises(RewardConfigError, match=msg):
        build_reward([{"type": "function", "params": {"path": spec.format(p=path)}}], base_dir=str(tmp_path))


def test_user_file_that_fails_to_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere_xyz\n")
    with pytest.raises(RewardConfigError, match="importing .*bad.py failed: ModuleNotFoundError"):
        build_reward([{"type": "function", "params": {"path": f"{bad}:f"}}])


def test_combination_weights_and_failures(user_file):
    _, path = user_file
    reward = build_reward([
        {"name": "len", "type": "function", "weight": 0.5, "params": {"path": f"{path}:score"}},
        {"name": "nan", "type": "function", "weight": 2.0, "fallback": -1.0, "params": {"path": f"{path}:nan"}},
        {"name": "boom", "type": "function", "weight": 1.0, "fallback": -3.0, "params": {"path": f"{path}:boom"}},
        {"name": "text", "type": "function", "weight": 1.0, "fallback": 0.25, "params": {"path": f"{path}:text"}},
    ])
    responses = ["ab", "xyz", "abcdx"]
    res = reward(["p"] * 3, responses, [{}, {}, {}])
    assert res.components["len"] == pytest.approx([0.2, 0.3, 0.5])
    assert res.components["nan"] == [1.0, -1.0, -1.0]
    assert res.components["boom"] == [2.0, -3.0, -3.0]
    assert res.components["text"] == [0.25] * 3
    assert res.failures == {"len": 0, "nan": 2, "boom": 2, "text": 3}
    assert "RuntimeError: cannot parse" in res.errors["boom"] and "not a number" in res.errors["text"]
    for i in range(3):
        want = 0.5 * res.components["len"][i] + 2 * res.components["nan"][i] + res.components["boom"][i] + 0.25
        assert res.total[i] == pytest.approx(want, abs=1e-12)
    m = res.metrics()
    assert m["reward"] == (pytest.approx(sum(res.total)), 3)
    assert m["reward_failures/boom"] == (2.0, 1)
    assert all(math.isfinite(t) for t in res.total)


class LengthScorer:
    """Stands in for the RM stage's model: a deterministic function of the response."""

    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses, samples):
        self.calls += 1
        return [len(r) - len(p) for p, r in zip(prompts, responses)]


class BrokenScorer:
    def score(self, prompts, responses, samples):
        raise RuntimeError("RM out of memory")


def test_reward_model_slot():
    scorer = LengthScorer()
    register_scorer("test_rm", scorer)
    register_scorer("broken_rm", BrokenScorer())
    try:
        reward = build_reward([
            {"name": "rm", "type": "model", "weight": 0.1, "params": {"scorer": "test_rm"}},
            {"name": "rm2", "type": "model", "fallback": 0.5, "params": {"scorer": "broken_rm"}},
            {"name": "kw", "type": "keywords", "params": {"include": ["yes"]}},
        ])
        res = reward(["ab", "a"], ["yes!", "no"], None)
        assert scorer.calls == 1, "the reward model scores the batch in one call"
        assert res.components["rm"] == [2.0, 1.0]
        assert res.components["rm2"] == [0.5, 0.5] and res.failures["rm2"] == 2
        assert res.total == [pytest.approx(0.2 + 0.5 + 1.0), pytest.approx(0.1 + 0.5 + 0.0)]
    finally:
        unregister_scorer("test_rm")
        unregister_scorer("broken_rm")
    with pytest.raises(RewardConfigError, match="no reward-model scorer 'test_rm' is registered"):
        build_reward([{"type": "model", "params": {"scorer": "test_rm"}}])


def test_config_errors_name_the_component():
    with pytest.raises(RewardConfigError, match=r"rl.rewards\[1\].type: unknown reward type 'bleu'"):
        build_reward([{"type": "keywords", "params": {"include": ["a"]}}, {"type": "bleu"}])
    with pytest.raises(RewardConfigError, match=r"rl.rewards\[0\].params: .*unexpected keyword argument 'patern'"):
        build_reward([{"type": "format", "params": {"patern": "x"}}])
    with pytest.raises(RewardConfigError, match=r"rl.rewards\[1\].name: 'length' is used by two"):
        build_reward([{"type": "length", "params": {"max": 3}}, {"type": "length", "params": {"min": 1}}])
    with pytest.raises(RewardConfigError, match="at least one reward component"):
        build_reward([])
