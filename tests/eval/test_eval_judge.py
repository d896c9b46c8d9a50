"""The pairwise LLM judge without a server: parser, rubric, MT-Bench aggregation, cache, self-judge
refusal, agreement figures (hand-computed), and the local-model backend on the tiny model."""

from __future__ import annotations

import json

import pytest

from onbrand.config import ConfigError, load_config
from onbrand.data.brand import load_brand
from onbrand.eval.config import EvalConfig, JudgeConfig
from onbrand.eval.judge import Judge, JudgeSetupError
from onbrand.eval.judge.backends import EndpointBackend, Reply
from onbrand.eval.judge.pairwise import aggregate
from onbrand.eval.judge.rubric import judge_messages, parse_verdict, render_rubric
from onbrand.eval.metrics.agreement import agreement, labels_from_scores


@pytest.fixture(scope="module")
def card(repo_root):
    return load_brand(repo_root / "configs/brands/aurora.yaml")


@pytest.mark.parametrize(
    "text,want",
    [
        ("A", "A"), (" B.", "B"), ("**B**", "B"), ("[[A]]", "A"), ("tie", "tie"), ("Tie.", "tie"),
        ('{"winner": "B", "reason": "calmer"}', "B"), ('```json\n{"winner": "tie", "reason": ""}\n```', "tie"),
        # Never guessed: an article "A", a verdict buried in prose, lower case, broken or wrong JSON.
        ("A good answer would be B", None), ("Answer: A", None), ("a", None), ("neither", None), ("", None),
        (None, None), ('{"winner": "A"', None), ('{"winner": "C"}', None), ('["A", "B"]', None), ("A or B", None),
    ],
)  # fmt: skip
def test_parse_verdict(text, want):
    assert parse_verdict(text) == want


def test_rubric_is_the_card_in_words(card):
    rubric = render_rubric(card)
    for piece in [
        *card.voice,
        *card.do,
        *card.dont,
        *(r.reason for r in card.banned),
        *(r.reason for r in card.required),
    ]:
        assert " ".join(piece.split()) in rubric, piece
    assert "product_question (Questions about features, setup, prices): 8-80 words" in rubric
    assert all(
        r.pattern not in rubric for r in card.banned
    )  # regexes are for the rule checker, not the judge
    msgs = judge_messages(rubric, card.name, [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q?"}],
                          "first", "second", "complaint_reply", "token")  # fmt: skip
    assert msgs[0]["role"] == "system" and rubric in msgs[0]["content"]
    user = msgs[1]["content"]
    assert "SYS" not in user and "Customer: Q?" in user and "Channel: complaint_reply" in user
    assert user.index("first") < user.index("[Answer B]") < user.index("second")
    assert user.endswith("A, B or tie.")


def test_aggregate_mt_bench_rules():
    # item: (verdict with aligned shown as A, verdict with aligned shown as B)
    verdicts = [
        "A",
        "B",  # aligned both times -> aligned
        "B",
        "A",  # base both times -> base
        "A",
        "A",  # A both times: position bias -> tie (inconsistent)
        "tie",
        "tie",  # tie, consistent
        "A",
        None,  # one answer unparseable -> invalid item
        "tie",
        "B",
    ]  # tie vs aligned: inconsistent -> tie
    out = aggregate(verdicts, 6, n_boot=200, ci=0.95, seed=0)  # fmt: skip
    assert out["labels"] == ["aligned", "base", "tie", "tie", None, "tie"]
    assert out["n_valid"] == 5 and out["counts"] == {"aligned": 1, "tie": 3, "base": 1}
    assert out["win_rate"]["value"] == pytest.approx((1 + 0 + 0.5 + 0.5 + 0.5) / 5)
    assert out["consistency"] == pytest.approx(3 / 5)  # items 1, 2, 4
    # decisive verdicts of valid items: A,B,B,A,A,A,B -> 4 of 7 picked the first position
    assert out["first_position_rate"] == pytest.approx(4 / 7)
    assert out["invalid_answers"] == 1 and out["invalid_rate"] == pytest.approx(1 / 12)
    assert aggregate([None, None], 1, 50, 0.95, 0)["win_rate"] is None


def test_agreement_hand_computed():
    judge = ["aligned", "aligned", "base", "tie", "aligned", None]
    human = ["aligned", "base", "base", "tie", "aligned", "aligned"]
    ag = agreement(judge, human, n_boot=200)
    assert ag["n"] == 5 and ag["accuracy"]["value"] == pytest.approx(4 / 5)
    # p_o = 4/5; judge marginals a3 b1 t1, human a2 b2 t1: p_e = (3*2 + 1*2 + 1*1) / 25 = 9/25
    assert ag["kappa"]["value"] == pytest.approx((4 / 5 - 9 / 25) / (1 - 9 / 25))
    assert ag["kappa"]["low"] <= ag["kappa"]["value"] <= ag["kappa"]["high"]
    assert ag["confusion"]["aligned|base"] == 1
    assert labels_from_scores([1.0, 0.2, 0.5], [0.5, 0.3, 0.5]) == ["aligned", "base", "tie"]
    assert agreement([None], ["aligned"])["n"] == 0


class FakeBackend:
    """Prefers the answer containing 'calm' when ``fair``, else always answers 'A'; counts calls."""

    kind = "fake"
    structured = None

    def __init__(self, fair=True, garbage_for=()):
        self.fair, self.garbage_for, self.sent = fair, set(garbage_for), []

    def identity(self):
        return {"model": "fake-judge", "fair": self.fair}

    def describe(self):
        return {"backend": self.kind, "model": "fake-judge"}

    def complete(self, chats, usage):
        out = []
        for m in chats:
            self.sent.append(m)
            body = m[1]["content"]
            a = body.split("[Answer A]\n")[1].split("\n[End of answer A]")[0]
            q = body.split("Customer: ")[1].split("\n")[0]
            if q in self.garbage_for:
                out.append(Reply("A good answer would be B", None, 10, 7, 1))
            elif self.fair:
                out.append(
                    Reply(json.dumps({"winner": "A" if "calm" in a else "B", "reason": "r"}), None, 10, 5, 1)
                )
            else:
                out.append(Reply("A", None, 10, 1, 1))
        return out


def _run(card, backend, tmp_path, n=4, rewards=None):
    cfg = JudgeConfig(cache_path=str(tmp_path / "cache.sqlite"))
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    aligned, base = [f"a calm answer {i}" for i in range(n)], [f"LOUD ANSWER {i}" for i in range(n)]
    return Judge(cfg, backend, None).run(card, chats, aligned, base, [None] * n, rewards, n_boot=100)


def test_judge_both_orders_cache_and_reward_agreement(card, tmp_path):
    fair = FakeBackend()
    rewards = {"aligned": [1.0, 1.0, 0.0, 1.0], "base": [0.0, 0.0, 1.0, 0.0]}
    out = _run(card, fair, tmp_path, rewards=rewards)
    assert out["win_rate"]["value"] == 1.0 and out["consistency"] == 1.0 and out["invalid_answers"] == 0
    assert len(fair.sent) == 8  # two orders per prompt, aligned first as A then as B
    assert "a calm answer 0" in fair.sent[0][1]["content"].split("[Answer B]")[0]
    assert "a calm answer 0" in fair.sent[1][1]["content"].split("[Answer B]")[1]
    assert out["agreement_reward"]["n"] == 4 and out["agreement_reward"]["accuracy"]["value"] == 0.75
    assert out["cost"]["sent"] == 8 and out["cost"]["prompt_tokens"] == 80
    again = FakeBackend()
    out2 = _run(card, again, tmp_path)
    assert again.sent == [] and out2["cost"]["cache_hits"] == 8 and out2["labels"] == out["labels"]


def test_position_bias_is_a_tie_and_garbage_is_never_cached(card, tmp_path):
    biased = _run(card, FakeBackend(fair=False), tmp_path / "b")
    assert biased["win_rate"]["value"] == 0.5 and biased["consistency"] == 0.0
    assert biased["first_position_rate"] == 1.0
    bad = FakeBackend(garbage_for={"q1"})
    out = _run(card, bad, tmp_path / "g")
    assert out["labels"][1] is None and out["n_valid"] == 3 and out["invalid_kinds"] == {"unparseable": 2}
    retry = FakeBackend(garbage_for={"q1"})
    _run(card, retry, tmp_path / "g")
    assert len(retry.sent) == 2  # only the two unparseable answers are asked again


def test_judge_config_never_echoes_a_key():
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, None, ["judge.api_key_env=sk-live-123456"])
    assert "sk-live-123456" not in str(e.value) and "NAME of an environment variable" in str(e.value)
    with pytest.raises(ConfigError, match="judge.endpoint must be an http"):
        load_config(EvalConfig, None, ["judge.endpoint=localhost:8000"])
    with pytest.raises(ConfigError, match="must not carry credentials") as e:
        load_config(EvalConfig, None, ["judge.endpoint=https://me:hunter2secret@api.example/v1"])
    assert "hunter2secret" not in str(e.value)
    with pytest.raises(JudgeSetupError, match="ONBRAND_TEST_UNSET_KEY is not set"):
        EndpointBackend(JudgeConfig(endpoint="http://127.0.0.1:9/v1", api_key_env="ONBRAND_TEST_UNSET_KEY"))


def test_unreachable_endpoint_fails_before_generation(tmp_path, eval_tiny_dir):
    from onbrand.eval.runner import run_eval

    cfg = load_config(EvalConfig, None, [f"aligned={eval_tiny_dir}", f"base_model={eval_tiny_dir}", "metrics.judge=true",
                                         "judge.endpoint=http://127.0.0.1:9/v1", "judge.timeout_s=2", "engine=hf",
                                         f"prompts={tmp_path / 'never-read.jsonl'}", f"out_dir={tmp_path / 'out'}"])  # fmt: skip
    with pytest.raises(JudgeSetupError, match="cannot list models"):
        run_eval(cfg)
    assert not (tmp_path / "out").exists()


def test_local_judge_is_refused_as_its_own_base_and_runs_when_allowed(tmp_path, eval_tiny_dir, card):
    from onbrand.eval.inputs import resolve_aligned
    from onbrand.eval.judge import prepare

    aligned = resolve_aligned(str(eval_tiny_dir), str(eval_tiny_dir), None)
    cfg = load_config(EvalConfig, None, ["metrics.judge=true", f"judge.model={eval_tiny_dir}", "engine=hf",
                                         "judge.max_tokens=6", f"judge.cache_path={tmp_path / 'c.sqlite'}"])  # fmt: skip
    with pytest.raises(JudgeSetupError, match="is the policy's base model"):
        prepare(cfg, aligned, [])
    warnings = []
    cfg.judge.allow_self = True
    judge = prepare(cfg, aligned, warnings)
    assert judge.self_judged and warnings and warnings[0].startswith("self-judged")
    chats = [[{"role": "user", "content": "Does the Dawn lamp have a timer?"}]]
    out = judge.run(card, chats, ["Yes, a calm thirty-minute sunrise."], ["NO!!"], [None], n_boot=50)
    # A random tiny model as judge: whatever it says is either a verdict or counted, never guessed.
    assert out["judge"]["backend"] == "local" and out["cost"]["completion_tokens"] > 0
    assert out["invalid_answers"] == sum(v is None for v in out["verdicts"][0])
