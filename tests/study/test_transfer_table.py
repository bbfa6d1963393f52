"""The transfer table on hand-made scores: pairing by seed, the noise rule, the headline."""

from __future__ import annotations

import math

import pytest

from crab_jax.study import transfer_table as T
from crab_jax.study.plan import multi_name, single_name
from crab_jax.study.schema import StudyConfig

TASKS = ("avqa", "ave", "s4")


def study(seeds=(0, 1, 2), variants=("lora", "ilora"), noise_se=2.0) -> StudyConfig:
    return StudyConfig(tasks=TASKS, seeds=seeds, variants=variants, single_variant="lora",
                       multi_steps="compute", adapter_trainable=(r"\.lora_A$",), shared_trainable=(r"^proj\.",), noise_se=noise_se)


def result(kind, variant, seed, scores, task=None):
    name = single_name(variant, task, seed) if kind == "single" else multi_name(variant, seed)
    return {"name": name, "kind": kind, "variant": variant, "seed": seed,
            "tasks": [task] if kind == "single" else list(TASKS),
            "scores": {t: {"metric": f"{t}_m", "mean": v, "n": 8} for t, v in scores.items()}}


# single[task][seed], multi[variant][seed][task]: avqa gains clearly with I-LoRA, ave loses clearly
# with LoRA, s4 moves by seed noise only.
SINGLE = {"avqa": [0.50, 0.52, 0.51], "ave": [0.60, 0.61, 0.62], "s4": [0.30, 0.35, 0.25]}
MULTI = {
    "ilora": [{"avqa": 0.60, "ave": 0.62, "s4": 0.33}, {"avqa": 0.61, "ave": 0.63, "s4": 0.31},
              {"avqa": 0.62, "ave": 0.64, "s4": 0.28}],
    "lora": [{"avqa": 0.49, "ave": 0.50, "s4": 0.32}, {"avqa": 0.53, "ave": 0.52, "s4": 0.30},
             {"avqa": 0.50, "ave": 0.51, "s4": 0.24}],
}


def all_results(seeds=(0, 1, 2)):
    out = []
    for i, seed in enumerate(seeds):
        for task in TASKS:
            # a single-task model is scored on every task; only its own task counts as "single"
            out.append(result("single", "lora", seed, {t: (SINGLE[task][i] if t == task else 0.0) for t in TASKS},
                              task))
        for variant, per_seed in MULTI.items():
            out.append(result("multi", variant, seed, per_seed[i]))
    return out


@pytest.fixture(scope="module")
def table():
    return T.build(all_results(), study())


def test_transfer_is_the_per_seed_difference_and_its_spread(table):
    for task in TASKS:
        row = table["tasks"][task]
        assert row["single"]["per_seed"] == {str(s): SINGLE[task][s] for s in range(3)}
        for variant in MULTI:
            t = row["multi"][variant]["transfer"]
            diffs = [MULTI[variant][s][task] - SINGLE[task][s] for s in range(3)]
            assert t["per_seed"] == pytest.approx({str(s): d for s, d in enumerate(diffs)})
            mean = sum(diffs) / 3
            std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
            assert (t["n"], t["mean"], t["std"], t["se"]) == pytest.approx((3, mean, std, std / math.sqrt(3)))
            assert row["multi"][variant]["mean"] == pytest.approx(sum(MULTI[variant][s][task] for s in range(3)) / 3)


def test_noise_rule_two_standard_errors(table):
    tasks = table["tasks"]
    assert tasks["avqa"]["multi"]["ilora"]["transfer"]["beyond_noise"] is True   # +0.10 with std 0.01
    assert tasks["ave"]["multi"]["lora"]["transfer"]["beyond_noise"] is True     # -0.10, a clear loss
    assert tasks["s4"]["multi"]["ilora"]["transfer"]["beyond_noise"] is False    # +0.007 with std 0.04
    assert T.beyond_noise(0.1, 0.1, 4, 2.0) is False   # exactly 2 SE: not beyond
    assert T.beyond_noise(0.1001, 0.1, 4, 2.0) is True
    assert T.beyond_noise(-0.3, 0.1, 4, 2.0) is True
    assert T.beyond_noise(0.5, None, 1, 2.0) is None


def test_one_seed_has_no_spread_and_says_n_a():
    t = T.build(all_results(seeds=(0,)), study(seeds=(0,)))
    row = t["tasks"]["avqa"]["multi"]["ilora"]
    assert row["transfer"]["n"] == 1 and row["transfer"]["std"] is None and row["transfer"]["beyond_noise"] is None
    assert row["transfer"]["mean"] == pytest.approx(0.10)
    assert "(n/a)" in T.markdown(t)


def test_headline_counts_positive_tasks_per_variant(table):
    ilora, lora = table["headline"]["ilora"], table["headline"]["lora"]
    # ilora: avqa +0.10, ave +0.02, s4 +0.007 -> 3 of 3; lora: avqa -0.003, ave -0.10, s4 -0.013 -> 0 of 3
    assert (ilora["positive"], ilora["tasks"], ilora["fraction"]) == (3, 3, 1.0)
    assert (lora["positive"], lora["fraction"]) == (0, 0.0)
    assert ilora["positive_beyond_noise"] == 2 and lora["negative_beyond_noise"] >= 1
    assert table["headline_text"] == "positive transfer on 3 of 3 tasks (100%) for I-LoRA vs 0% for LoRA (same r)"


def test_pairing_uses_seeds_present_in_both():
    t = T.paired_transfer({"0": 0.5, "1": 0.7, "2": 0.9}, {"1": 0.6, "2": 0.6}, 2.0)
    assert t["per_seed"] == pytest.approx({"1": 0.1, "2": 0.3}) and t["n"] == 2


def test_markdown_has_a_row_per_task_the_headline_and_the_command(table):
    md = T.markdown({**table, "command": "python -m crab_jax.study transfer --config x --workdir y"})
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(TASKS)
    assert table["headline_text"] in md and "--workdir y" in md
    assert "| +0.100 ± 0.010 * |" in md  # avqa, I-LoRA: beyond the noise
