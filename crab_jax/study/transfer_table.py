"""The transfer table: per-run scores -> single vs multi-task per task, variant and seed (pure).

Input: the runs' results (``DIR/runs/<name>/result.json``: ``kind``, ``variant``, ``seed`` and
``scores``, task -> ``{metric, mean, ...}``, the model's score on EVERY study task). Per task:

- single: the single-task model's score on its own task over seeds (mean, sample std);
- per multi-task variant: the multi-task model's score on that task (mean, std), and the
  transfer = multi - single paired by seed: the per-seed differences, their mean, std, standard
  error (std / sqrt(n)) and n;
- beyond noise: ``|mean difference| > study.noise_se * standard error`` (noise_se = 2: about a 95%
  interval of the mean difference excluding 0); with one seed there is no spread: ``None``
  ("n/a" in the table).

Every headline metric is higher-is-better (accuracy, F, IoU), so a transfer is positive when the
mean difference is > 0. Headline, in the papers' form: "positive transfer on X of N tasks (Y%)
for I-LoRA vs Z% for LoRA (same r), ...", and how many of those are beyond the noise.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from crab_jax.study.plan import MULTI, SINGLE
from crab_jax.study.schema import StudyConfig

JSON_FILE = "transfer.json"
MARKDOWN_FILE = "transfer.md"
LABELS = {"lora": "LoRA (same r)", "lora_budget": "LoRA (same rank budget)", "ilora": "I-LoRA",
          "floor": "frozen-base floor"}
# The variant the headline is about (the others are compared with it), when the study trains it.
HEADLINE_VARIANT = "ilora"


def label(variant: str) -> str:
    return LABELS.get(variant, variant)


def spread(values: Sequence[float]) -> dict:
    """``{n, mean, std}`` (sample std, ddof 1; None with fewer than 2 values; mean None when empty)."""
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
    return {"n": n, "mean": mean, "std": std}


def beyond_noise(mean: float | None, std: float | None, n: int, noise_se: float) -> bool | None:
    """``|mean| > noise_se * std / sqrt(n)``; None (n/a) with fewer than 2 paired seeds."""
    if n < 2 or mean is None or std is None:
        return None
    return abs(mean) > noise_se * std / math.sqrt(n)


def paired_transfer(multi: Mapping[str, float], single: Mapping[str, float], noise_se: float) -> dict:
    """multi - single per seed present in both (``{seed: score}``) and their spread."""
    seeds = sorted(set(multi) & set(single), key=int)
    per_seed = {s: multi[s] - single[s] for s in seeds}
    out = {"per_seed": per_seed, **spread(list(per_seed.values()))}
    out["se"] = out["std"] / math.sqrt(out["n"]) if out["std"] is not None else None
    out["beyond_noise"] = beyond_noise(out["mean"], out["std"], out["n"], noise_se)
    return out


def per_seed_scores(results: Sequence[Mapping], kind: str, variant: str, task: str, *,
                    trained_on: str | None = None) -> dict[str, float]:
    """``{seed: score on task}`` of the runs of ``kind`` / ``variant`` (single: trained on ``trained_on``)."""
    out = {}
    for r in results:
        if r["kind"] != kind or r["variant"] != variant or task not in r["scores"]:
            continue
        if trained_on is not None and list(r["tasks"]) != [trained_on]:
            continue
        out[str(r["seed"])] = float(r["scores"][task]["mean"])
    return out


def headline_counts(tasks: Mapping[str, Mapping], variant: str) -> dict:
    """How many tasks ``variant``'s multi-task model transfers positively on (mean difference > 0)."""
    rows = [t["multi"][variant]["transfer"] for t in tasks.values() if variant in t["multi"]]
    rows = [r for r in rows if r["mean"] is not None]
    positive = sum(r["mean"] > 0 for r in rows)
    return {"positive": positive, "tasks": len(rows), "fraction": positive / len(rows) if rows else None,
            "positive_beyond_noise": sum(r["mean"] > 0 and bool(r["beyond_noise"]) for r in rows),
            "negative_beyond_noise": sum(r["mean"] < 0 and bool(r["beyond_noise"]) for r in rows)}


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def headline_text(counts: Mapping[str, Mapping], variants: Sequence[str]) -> str:
    """"positive transfer on X of N tasks (Y%) for I-LoRA vs Z% for LoRA (same r), ..."."""
    if not variants:
        return "no multi-task variant"
    first = HEADLINE_VARIANT if HEADLINE_VARIANT in variants else variants[0]
    c = counts[first]
    text = f"positive transfer on {c['positive']} of {c['tasks']} tasks ({_percent(c['fraction'])}) for {label(first)}"
    others = [v for v in variants if v != first]
    if others:
        text += " vs " + ", ".join(f"{_percent(counts[v]['fraction'])} for {label(v)}" for v in others)
    return text


def build(results: Sequence[Mapping], study: StudyConfig) -> dict:
    """The whole table (``transfer.json``): the study, every run's scores, per task the single and
    multi-task numbers and the paired transfers, the headline counts and text."""
    sv = study.single_variant
    tasks = {}
    for task in study.tasks:
        single = per_seed_scores(results, SINGLE, sv, task, trained_on=task)
        metric = next((r["scores"][task]["metric"] for r in results if task in r["scores"]), None)
        row = {"metric": metric, "single": {"variant": sv, "per_seed": single, **spread(list(single.values()))},
               "multi": {}}
        for variant in study.variants:
            multi = per_seed_scores(results, MULTI, variant, task)
            row["multi"][variant] = {"per_seed": multi, **spread(list(multi.values())),
                                     "transfer": paired_transfer(multi, single, study.noise_se)}
        tasks[task] = row
    counts = {v: headline_counts(tasks, v) for v in study.variants}
    runs = [{"name": r["name"], "kind": r["kind"], "variant": r["variant"], "seed": r["seed"],
             "tasks": list(r["tasks"]), "scores": {t: e["mean"] for t, e in r["scores"].items()},
             "metrics": {t: e["metric"] for t, e in r["scores"].items()}} for r in results]
    return {"study": study.as_dict(), "runs": sorted(runs, key=lambda r: r["name"]), "tasks": tasks,
            "headline": counts, "headline_text": headline_text(counts, study.variants),
            "noise_rule": f"|mean per-seed difference| > {study.noise_se:g} standard errors (std / sqrt(seeds)); "
                          "n/a with one seed",
            "positive_rule": "mean per-seed difference multi - single > 0 (every headline metric is higher-is-better)"}


def _score(entry: Mapping) -> str:
    if entry["mean"] is None:
        return "-"
    return f"{entry['mean']:.3f}" + (f" ± {entry['std']:.3f}" if entry["std"] is not None else "")


def _transfer(t: Mapping) -> str:
    if t["mean"] is None:
        return "-"
    mark = {True: " *", False: "", None: " (n/a)"}[t["beyond_noise"]]
    return f"{t['mean']:+.3f}" + (f" ± {t['std']:.3f}" if t["std"] is not None else "") + mark


def markdown(table: Mapping) -> str:
    """``transfer.md``: the headline, the per-task table, the rules and the command."""
    study = table["study"]
    variants = list(study["variants"])
    seeds = ", ".join(str(s) for s in study["seeds"])
    head = ["task", "metric", f"single-task, {label(study['single_variant'])}"]
    for v in variants:
        head += [f"multi {label(v)}", f"Δ {label(v)}"]
    lines = [f"# Transfer study: single-task vs multi-task ({len(study['tasks'])} tasks, seeds {seeds})", "",
             f"**{table['headline_text']}**", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, row in table["tasks"].items():
        cells = [task, str(row["metric"]), _score(row["single"])]
        for v in variants:
            cells += [_score(row["multi"][v]), _transfer(row["multi"][v]["transfer"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Scores: mean ± sample std over seeds. Δ = multi - single, paired by seed (mean ± std of the "
              f"per-seed differences); `*`: beyond the seed noise ({table['noise_rule']}).", ""]
    for v in variants:
        c = table["headline"][v]
        lines.append(f"- {label(v)}: positive on {c['positive']} of {c['tasks']} tasks ({_percent(c['fraction'])}); "
                     f"beyond noise: {c['positive_beyond_noise']} positive, {c['negative_beyond_noise']} negative")
    if table.get("command"):
        lines += ["", "Command:", "", "```", table["command"], "```"]
    return "\n".join(lines) + "\n"
