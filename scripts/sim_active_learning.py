"""Simulate how many human judgements uncertainty sampling saves over random sampling (demo brand).

The pool is the demo snapshot's train split (its pairs stand in for unlabelled candidate pairs; the
simulated annotator answers with each pair's known preference). What the human labels train is a
pairwise judge: logistic regression on frozen features of the two answers (the base model's
mean-pooled last hidden state over the answer tokens, prompt in context, plus the brand-rule
compliance score), so the "held-out win rate" is a proxy: the fraction of dev pairs whose chosen
answer the learned judge prefers. Training a DPO policy per budget point would be the real thing
and is far too slow on two CPU cores. The test split is never read.

The uncertainty rule asks people first where the automatic judges disagree (current learned judge,
the demo reward model trained on the judge split, the brand rules), then where the learned judge's
margin is smallest. See ``onbrand.annotate.active_sim`` for the strategies.

    make demo                                        # once: builds runs/demo (snapshot, reward run)
    python -P scripts/sim_active_learning.py         # features once (~10 min on 2 cores), sim ~1 min
    python -P scripts/sim_active_learning.py --seeds 5 --budget 100

Writes ``bench/results/active_learning.{json,md}`` and ``docs/img/active_learning.png``; the
features are cached under ``$ONBRAND_CACHE/active_sim/`` (keyed by snapshot, model, reward run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FEATURE_VERSION = 1


def _read_split(snapshot: Path, split: str) -> list[dict]:
    """Records of one split; the test split is refused so it can never leak into this benchmark."""
    if split == "test":
        raise ValueError("the active-learning simulation never reads the test split")
    import pyarrow.parquet as pq

    return pq.read_table(snapshot / f"{split}.parquet").to_pylist()


def _answer(msgs: list[dict]) -> str:
    return msgs[-1]["content"]


def _embed(
    records: list[dict], model_name: str, threads: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled last hidden state of the base model over each answer's tokens, prompt in context.

    Returns (chosen, rejected), each (n, hidden). Sequences are sorted by length so batches pad
    little; the model runs once per answer, without gradients.
    """
    import torch

    from onbrand.models import load_model, load_tokenizer

    torch.set_num_threads(threads)
    tok = load_tokenizer(model_name)
    model = load_model(model_name).eval()
    items: list[tuple[list[int], int]] = []
    for r in records:
        prefix = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        n_prefix = len(tok(prefix, add_special_tokens=False)["input_ids"])
        for side in ("chosen", "rejected"):
            full = tok.apply_chat_template(r["prompt"] + r[side][-1:], tokenize=False)
            items.append((tok(full, add_special_tokens=False)["input_ids"], n_prefix))
    out = np.zeros((len(items), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    t0 = time.perf_counter()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        length = max(len(items[i][0]) for i in idx)
        ids = torch.full((len(idx), length), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(idx), length), dtype=torch.long)
        pool = torch.zeros((len(idx), length), dtype=torch.float32)
        for k, i in enumerate(idx):
            seq, n_prefix = items[i]
            ids[k, : len(seq)] = torch.tensor(seq)
            attn[k, : len(seq)] = 1
            pool[k, n_prefix : len(seq)] = 1.0  # the answer's tokens (and its end-of-turn marker)
        with torch.no_grad():
            h = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
        mean = (h * pool[..., None]).sum(1) / pool.sum(1, keepdim=True).clamp(min=1.0)
        out[idx] = mean.numpy()
        if (b // batch_size) % 10 == 0:
            print(
                f"  embedded {b + len(idx)}/{len(items)} answers ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return out[0::2], out[1::2]


def _reward_scores(records: list[dict], reward_dir: Path, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo reward model's score of each chosen and rejected answer (its own system prompt)."""
    import torch

    from onbrand.scoring import load_scorer

    torch.set_num_threads(threads)
    scorer = load_scorer(reward_dir, batch_size=16)
    convs = [r["prompt"] + r[side][-1:] for r in records for side in ("chosen", "rejected")]
    scores = np.asarray(scorer.score(convs), dtype=np.float64)
    return scores[0::2], scores[1::2]


def _compliance(records: list[dict], card) -> tuple[np.ndarray, np.ndarray]:
    ch = [card.compliance_score(_answer(r["chosen"]), r.get("channel")) for r in records]
    rj = [card.compliance_score(_answer(r["rejected"]), r.get("channel")) for r in records]
    return np.asarray(ch, dtype=np.float64), np.asarray(rj, dtype=np.float64)


def _check_inputs(snapshot: Path, reward: Path, brand: Path) -> None:
    missing = [
        str(p) for p in (snapshot / "train.parquet", snapshot / "dev.parquet", reward / "run.json", brand)
    ]
    missing = [p for p in missing if not Path(p).exists()]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: build the demo run first with `make demo`")


def features(args: argparse.Namespace, train: list[dict], dev: list[dict]) -> dict[str, np.ndarray]:
    """Embeddings (train + dev) and reward scores (train pool only), cached in one .npz.

    The cache key covers the snapshot id, the base model's content hash and the reward run id, so
    a rebuilt demo recomputes them; the brand-rule scores are cheap and always recomputed.
    """
    from onbrand.artifacts import read_json, sha256_json
    from onbrand.lineage import load_run
    from onbrand.models import cache_root, model_hash

    snap_id = read_json(args.snapshot / "manifest.json")["snapshot_id"]
    key = sha256_json(
        {
            "v": FEATURE_VERSION,
            "snapshot": snap_id,
            "model": model_hash(args.model),
            "reward": load_run(args.reward)["run_id"],
        }
    )[:16]
    path = cache_root() / "active_sim" / f"features-{key}.npz"
    ids = np.asarray([r["id"] for r in train + dev])
    if path.exists():
        data = dict(np.load(path))
        if np.array_equal(data["ids"], ids):
            print(f"features: cached {path.name}")
            return data
    t0 = time.perf_counter()
    print(f"features: embedding {2 * len(ids)} answers with {args.model} ({args.threads} threads)")
    emb_c, emb_r = _embed(train + dev, args.model, args.threads, args.batch_size)
    print(f"features: reward-model scores for the {len(train)} pool pairs ({args.reward})")
    rm_c, rm_r = _reward_scores(train, args.reward, args.threads)
    data = {"ids": ids, "emb_chosen": emb_c, "emb_rejected": emb_r, "rm_chosen": rm_c, "rm_rejected": rm_r}
    data["compute_s"] = np.asarray(round(time.perf_counter() - t0, 1))  # reported on cached runs too
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)
    return data


def _overlap(snapshot: Path, reward: Path, train: list[dict], dev: list[dict]) -> dict[str, Any]:
    """How far the reward model's training data (the judge split) overlaps the pool and dev set:
    record ids listed in its run.json, and identical prompts or answer pairs in judge.parquet."""
    from onbrand.lineage import load_run

    run = load_run(reward)
    judge = _read_split(snapshot, "judge")
    rm_ids = set(run.get("data", {}).get("record_ids") or [])

    def prompts(rows: list[dict]) -> set[str]:
        return {json.dumps(r["prompt"], sort_keys=True) for r in rows}

    def answers(rows: list[dict]) -> set[tuple[str, str]]:
        return {(_answer(r["chosen"]), _answer(r["rejected"])) for r in rows}

    out: dict[str, Any] = {
        "reward_run": run.get("run_id"),
        "reward_train_split": run.get("data", {}).get("split"),
        "reward_train_pairs": len(rm_ids),
        "reward_ids_equal_judge_split": rm_ids == {r["id"] for r in judge},
    }
    for name, rows in (("train", train), ("dev", dev)):
        out[f"ids_shared_with_{name}"] = len(rm_ids & {r["id"] for r in rows})
        out[f"prompts_shared_with_{name}"] = len(prompts(judge) & prompts(rows))
        out[f"answer_pairs_shared_with_{name}"] = len(answers(judge) & answers(rows))
    return out


def build_pool(train, dev, feats, card, rule_feature: bool):
    """Learner features (chosen - rejected), scaled per column by the pool's RMS (unlabelled
    statistics only); with ``rule_feature`` the brand-rule compliance difference is one more
    column. Returns the pool, the dev features and the dev pairs' compliance difference."""
    from onbrand.annotate.active_sim import Pool

    n = len(train)
    x = (feats["emb_chosen"] - feats["emb_rejected"]).astype(np.float64)
    rc, rr = _compliance(train + dev, card)
    rules = rc - rr
    if rule_feature:
        x = np.concatenate([x, rules[:, None]], axis=1)
    scale = np.sqrt((x[:n] ** 2).mean(axis=0))
    x = x / np.where(scale > 0, scale, 1.0)
    rm = feats["rm_chosen"] - feats["rm_rejected"]
    return Pool(x=x[:n], rm=rm, rules=rules[:n]), x[n:], rules[n:]


def run_all(pool, dev_x, cfg, seeds: int, rank_fn, route_fn) -> dict[str, list[dict]]:
    from onbrand.annotate.active_sim import STRATEGIES, simulate

    curves: dict[str, list[dict]] = {}
    for strategy in STRATEGIES:
        t0 = time.perf_counter()
        curves[strategy] = [simulate(pool, dev_x, strategy, s, cfg, rank_fn, route_fn) for s in range(seeds)]
        print(f"  {strategy}: {seeds} seeds in {time.perf_counter() - t0:.1f} s", flush=True)
    return curves


LABELS = {
    "random": "random",
    "margin": "margin (learned judge's smallest margin only)",
    "uncertain": "uncertain (judges disagree, then small margin)",
    "rule": "static rule (reward model vs rules, small reward margin)",
    "uncertain+synthetic": "uncertain + the rule's confident pairs as synthetic labels",
}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for s, summ in res["summaries"].items():
        (line,) = ax.plot(summ["labels"], summ["median"], marker="o", ms=3, label=LABELS[s])
        ax.fill_between(summ["labels"], summ["q25"], summ["q75"], color=line.get_color(), alpha=0.15)
    target = res["labels_to_target"]["target_accuracy"]
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.3f} (random at the full budget)")
    ax.axhline(res["ceiling"], color="black", ls=":", lw=1, label=f"all {res['pool']['pairs']} pool labels")
    ax.set_xlabel("human judgements (pool pairs labelled by people)")
    ax.set_ylabel("dev pairwise accuracy of the learned judge")
    ax.set_title(
        f"Demo brand, dev split ({res['dev_pairs']} pairs): median and 25-75% over {res['config']['seeds']} seeds"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _fmt_spread(sp: dict) -> str:
    def v(x: float | None) -> str:
        return "never" if x is None else f"{x:.0f}"

    return (
        f"{v(sp['median'])} [{v(sp['q25'])}, {v(sp['q75'])}] ({sp['reached']}/{sp['seeds']} seeds reach it)"
    )


def _table(res: dict[str, Any], points: list[int]) -> list[str]:
    lt = res["labels_to_target"]
    head = " | ".join(f"dev acc @ {p}" for p in points)
    rows = [
        f"| strategy | {head} | labels to reach {lt['target_accuracy']:.3f}: median [25%, 75%] over seeds "
        "| median curve reaches it at |",
        "|---|" + "---|" * (len(points) + 2),
    ]
    for s, summ in res["summaries"].items():
        cells = []
        for p in points:
            i = summ["labels"].index(p)
            cells.append(f"{summ['median'][i]:.3f} [{summ['q25'][i]:.3f}, {summ['q75'][i]:.3f}]")
        mc = lt[s]["median_curve"]
        rows.append(f"| {s} | {' | '.join(cells)} | {_fmt_spread(lt[s]['spread'])} | {mc or 'never'} |")
    return rows


def _feat_time(res: dict[str, Any]) -> str:
    t = res["timing_s"]
    if t["features"] > 5 or t["features_first_pass"] is None:
        return f"{t['features']:.0f} s"
    return f"from the cache; the first pass took {t['features_first_pass']:.0f} s"


def markdown(res: dict[str, Any]) -> str:
    cfg, pj, ov = res["config"], res["pool"], res["overlap"]
    labels = res["summaries"]["random"]["labels"]
    points = sorted({p for p in (4, 10, 20, 40, cfg["budget"]) if p in labels})
    lines = [
        "## Active learning on the demo brand: human judgements saved by uncertainty sampling",
        "",
        f"On {res['date'][:10]} ({res['host']}, load average {res['timing_s']['load_average_at_start'][0]} "
        f"at the start: shared machine), after `make demo`: `{res['command']}` (features {_feat_time(res)}; "
        f"simulation {res['timing_s']['simulate']:.0f} s, variant included). Selection rule: "
        f"{res['selection_rule']}, tau = {cfg['tau']}.",
        "",
        res["what"],
        "",
        *_table(res, points),
        "",
        f"Headline: {res['verdict']}",
        "",
        f"One dev pair below the target: {res['verdict_less_one_pair']}",
        "",
        f"Learned judge with all {pj['pairs']} pool labels: dev accuracy {res['ceiling']:.3f}.",
        "",
        "What the automatic judges already decide (checked against the known preferences, which the "
        f"selection never sees): the brand rules alone separate {pj['rules_decide']} of the {pj['pairs']} pool "
        f"pairs, {pj['rules_decide_correct']} of them the right way (dev: {res['dev_rules']['correct']} of "
        f"{res['dev_pairs']} right); the reward model prefers the chosen answer in {pj['reward_model_correct']} "
        f"(its run's eval.json: dev accuracy {res['reward_dev_accuracy']}); reward model and rules disagree on "
        f"{pj['reward_model_vs_rules_disagree']}; {pj['reward_model_margin_below_tau']} have a reward margin below "
        f"tau. The rule sends {pj['rule_sends_to_people']} pool pairs to people and settles "
        f"{pj['rule_makes_synthetic']} synthetically, {pj['synthetic_correct']} of those correctly.",
        "",
    ]
    if "variant" in res:
        var = res["variant"]
        lines += [
            f"Variant: the learned judge {'with' if var['rule_feature'] else 'without'} the rule score as a "
            f"feature ({var['feature_dim']} features), everything else the same:",
            "",
            *_table(var, points),
            "",
            f"Variant headline: {var['verdict']}",
            "",
        ]
    lines += [
        f"Data separation: the reward run `{ov['reward_run']}` trained on the `{ov['reward_train_split']}` split "
        f"({ov['reward_train_pairs']} record ids, the same set as judge.parquet: {ov['reward_ids_equal_judge_split']}); "
        f"shared with train / dev: record ids {ov['ids_shared_with_train']} / {ov['ids_shared_with_dev']}, identical "
        f"prompts {ov['prompts_shared_with_train']} / {ov['prompts_shared_with_dev']}, identical answer pairs "
        f"{ov['answer_pairs_shared_with_train']} / {ov['answer_pairs_shared_with_dev']}. The test split is never read.",
        "",
        "![learning curves](../../docs/img/active_learning.png)",
        "",
    ]
    return "\n".join(lines)


def _host() -> str:
    import os
    import platform

    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].replace("(R)", "").strip()
                break
    return f"{cpu}, {os.cpu_count()} cores"


WHAT = (
    "Pool: the {pool} train-split pairs of the demo snapshot, as unlabelled candidates; the simulated "
    "annotator answers with each pair's known preference. Held-out: the {dev} dev-split pairs (one pair = "
    "{one_pair:.3f} accuracy); the test split is never read. The quantity learned from the human labels is "
    "a pairwise judge, not a policy (a DPO run per budget point is far too slow on 2 CPU cores): L2 "
    "logistic regression (l2 = {l2}, fixed, not tuned; no intercept) on the difference of the two answers' "
    'frozen features: {learner}. Each pair is shown in a random left/right orientation. The "held-out win '
    'rate" is its proxy: the fraction of dev pairs whose chosen answer the learned judge prefers. What '
    "judged, what it saw: the learned judge saw only the human labels queued so far (the synthetic curve "
    "also the selection rule's labels for the pairs it settles); the selection saw the reward model's "
    "scores (a run trained on the judge split, disjoint from train and dev, below), the brand rules' "
    "scores and the current learned judge, never the known preferences of unlabelled pairs. Every strategy "
    "starts from the same {seed_labels} random labels per seed (paired runs) and adds {k} per round up to "
    "{budget}; {seeds} seeds."
)


def _learner_text(model: str, rule_feature: bool) -> str:
    emb = f"the base model {model}'s mean-pooled last hidden state over the answer tokens, prompt in context"
    return emb + (", plus the brand-rule compliance score" if rule_feature else " (no rule score)")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from onbrand.annotate.active_sim import SimConfig

    d = SimConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--snapshot", type=Path, default=Path("runs/demo/snapshot"))
    p.add_argument("--brand", type=Path, default=Path("configs/brands/aurora.yaml"))
    p.add_argument("--reward", type=Path, default=Path("runs/demo/reward"))
    p.add_argument("--model", default="embedded:smollm2-135m-instruct", help="base model of the features")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument(
        "--seed-labels", type=int, default=d.seed_labels, help="random labels every strategy starts from"
    )
    p.add_argument("--k", type=int, default=d.k, help="human labels per round")
    p.add_argument("--budget", type=int, default=d.budget, help="human labels at the end")
    p.add_argument(
        "--l2", type=float, default=d.l2, help="L2 penalty of the learned judge (fixed, not tuned)"
    )
    p.add_argument("--tau", type=float, default=None, help="reward margin below which a pair goes to people")
    p.add_argument("--rule-feature", action="store_true", help="the learned judge also sees the rules' score")
    p.add_argument("--no-variant", action="store_true", help="skip the run with --rule-feature flipped")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the one feature pass")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--plot", type=Path, default=Path("docs/img/active_learning.png"))
    return p.parse_args(argv)


def experiment(
    train, dev, feats, card, cfg, seeds: int, rule_feature: bool, rank_fn, route_fn
) -> dict[str, Any]:
    """All strategies for one learner setting: curves, labels to target, the all-labels ceiling."""
    from onbrand.annotate.active_sim import accuracy, fit_logreg, headline, verdict

    pool, dev_x, dev_rules = build_pool(train, dev, feats, card, rule_feature)
    t0 = time.perf_counter()
    curves = run_all(pool, dev_x, cfg, seeds, rank_fn, route_fn)
    res = headline(curves, 1 / len(dev))
    res.update(
        rule_feature=rule_feature,
        feature_dim=int(pool.x.shape[1]),
        simulate_s=round(time.perf_counter() - t0, 1),
        ceiling=accuracy(fit_logreg(pool.x, np.ones(len(pool.x)), cfg.l2), dev_x),
        per_seed={s: [c["accuracy"] for c in cs] for s, cs in curves.items()},
        synthetic_seed0={
            k: curves["uncertain+synthetic"][0][k] for k in ("labels", "synthetic", "synthetic_correct")
        },
    )
    res["verdict"] = verdict(res["labels_to_target"], cfg.budget)
    res["verdict_less_one_pair"] = verdict(res["labels_to_target_less_one_pair"], cfg.budget)
    return res, pool, dev_rules


def _describe(args: argparse.Namespace, cfg, n_pool: int, n_dev: int) -> tuple[dict[str, Any], str]:
    """The run's configuration and the plain-words description of what was simulated."""
    config = {"seeds": args.seeds, "seed_labels": cfg.seed_labels, "k": cfg.k, "budget": cfg.budget, "l2": cfg.l2,
              "tau": cfg.tau, "model": args.model, "snapshot": str(args.snapshot), "reward_run": str(args.reward),
              "brand": str(args.brand)}  # fmt: skip
    learner = _learner_text(args.model, args.rule_feature)
    return config, WHAT.format(pool=n_pool, dev=n_dev, one_pair=1 / n_dev, learner=learner, **config)


def main(argv: list[str] | None = None) -> int:
    from onbrand.annotate.active_sim import SimConfig, pool_judges, selection_rule
    from onbrand.artifacts import atomic_write_json, atomic_write_text, environment_record, read_json
    from onbrand.data.brand import load_brand

    args = _parse(argv)
    load_start = [round(x, 2) for x in os.getloadavg()]  # the 2 cores are shared: timings vary
    try:
        _check_inputs(args.snapshot, args.reward, args.brand)
        rank_fn, route_fn, rule_source, default_tau = selection_rule()
        tau = default_tau if args.tau is None else args.tau
        cfg = SimConfig(seed_labels=args.seed_labels, k=args.k, budget=args.budget, l2=args.l2, tau=tau)
        cfg.budgets()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train, dev = _read_split(args.snapshot, "train"), _read_split(args.snapshot, "dev")
    card = load_brand(args.brand)
    t0 = time.perf_counter()
    feats = features(args, train, dev)
    t_feat = time.perf_counter() - t0
    print(f"simulating ({'with' if args.rule_feature else 'without'} the rule feature)")
    res, pool, dev_rules = experiment(
        train, dev, feats, card, cfg, args.seeds, args.rule_feature, rank_fn, route_fn
    )
    if not args.no_variant:
        print(f"variant ({'without' if args.rule_feature else 'with'} the rule feature)")
        var, _, _ = experiment(
            train, dev, feats, card, cfg, args.seeds, not args.rule_feature, rank_fn, route_fn
        )
        res["variant"] = {k: v for k, v in var.items() if k not in ("per_seed",)}
    cmd = "python -P scripts/sim_active_learning.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    config, what = _describe(args, cfg, len(train), len(dev))
    reward_eval = args.reward / "eval.json"
    res.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        command=cmd,
        host=_host(),
        config=config,
        selection_rule=rule_source,
        what=what,
        dev_pairs=len(dev),
        pool=pool_judges(pool, cfg.tau, route_fn),
        dev_rules={"decide": int((dev_rules != 0).sum()), "correct": int((dev_rules > 0).sum())},
        reward_dev_accuracy=read_json(reward_eval).get("eval/accuracy") if reward_eval.exists() else None,
        overlap=_overlap(args.snapshot, args.reward, train, dev),
        test_split_read=False,
        timing_s={
            "features": round(t_feat, 1),
            "features_first_pass": float(feats["compute_s"]) if "compute_s" in feats else None,
            "simulate": round(res["simulate_s"] + res.get("variant", {}).get("simulate_s", 0.0), 1),
            "load_average_at_start": load_start,
        },
        environment=environment_record(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "active_learning.json", res)
    plot(res, args.plot)
    atomic_write_text(args.out / "active_learning.md", markdown(res))
    print(res["verdict"])
    print(f"wrote {args.out / 'active_learning.json'}, {args.out / 'active_learning.md'}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
