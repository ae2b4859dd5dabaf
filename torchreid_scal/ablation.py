"""An ablation study: the same config trained as several variants and seeds, each run by ``tools/main.py`` in
its own process and directory, then collected into a table, a JSON file and a chart.

A run is finished when its directory holds ``run.json`` (written after ``tools/main.py`` exits 0 and its
results are read back); repeating the command skips finished runs and resumes interrupted ones
(``model.resume auto``), so an ablation can be stopped and continued at any time.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

VARIANTS: Dict[str, List[str]] = {
    "bnneck": ["model.name", "resnet50_bnneck", "loss.name", "triplet"],
    "attention": ["model.name", "resnet50_scal_channel", "loss.name", "triplet"],
    "scal_paper": ["model.name", "resnet50_scal_channel", "loss.name", "scal", "scal.critic_activation", "relu",
                   "scal.critic_counterfactual", "False", "scal.critic_explore_std", "0.0"],
    "scal_grounded": ["model.name", "resnet50_scal_channel", "loss.name", "scal", "scal.critic_activation", "silu",
                      "scal.critic_counterfactual", "True", "scal.critic_explore_std", "0.5"],
    "scal_counterfactual": ["model.name", "resnet50_scal_channel", "loss.name", "scal", "scal.critic_activation",
                            "silu", "scal.critic_counterfactual", "True", "scal.critic_explore_std", "0.0"],
    "scal_silu": ["model.name", "resnet50_scal_channel", "loss.name", "scal", "scal.critic_activation", "silu",
                  "scal.critic_counterfactual", "False", "scal.critic_explore_std", "0.0"],
    "attention_spatial": ["model.name", "resnet50_scal_spatial", "loss.name", "triplet"],
    "scal_paper_spatial": ["model.name", "resnet50_scal_spatial", "loss.name", "scal", "scal.critic_activation",
                           "relu", "scal.critic_counterfactual", "False", "scal.critic_explore_std", "0.0"],
    "scal_grounded_spatial": ["model.name", "resnet50_scal_spatial", "loss.name", "scal", "scal.critic_activation",
                              "silu", "scal.critic_counterfactual", "True", "scal.critic_explore_std", "0.5"],
}
"""Variant name -> the ``KEY VALUE`` overrides that make it (on top of the base config and common overrides):
the BNNeck network without attention, attention trained without a critic (triplet engine), SCAL as the paper
states it, SCAL with the critic grounded by counterfactual and exploratory maps, and (channel only) by the
counterfactual maps alone, whose training pass is the paper's, and the paper's critic with SiLU units (their
gradient is not 0 for negative inputs, where ReLU units die); channel and spatial."""
METRICS = ("mAP", "rank1")
DIAGNOSTICS = ("critic_alignment", "critic_shared", "critic_heldout_corr", "critic_agreement", "critic_alive",
               "critic_reward_corr")
SHOWN = DIAGNOSTICS[:5]  # the tables' diagnostic columns
HEADERS = "| alignment | shared | held-out corr | agreement | alive |"
RESULT = "run.json"


def run_dir(output: str, variant: str, seed: int) -> str:
    return os.path.join(output, "runs", variant, f"seed{seed}")


def read_results(save_dir: str) -> Dict[str, Any]:
    """The final test results (``Test/<target>/{mAP,rank1}`` of the first target, in %) and the last epoch's
    critic diagnostics (``Epoch/<name>``) from a run's TensorBoard events."""
    events = EventAccumulator(save_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    results: Dict[str, Any] = {}
    for metric in METRICS:
        tag = next((t for t in tags if t.startswith("Test/") and t.endswith(f"/{metric}")), None)
        if tag is None:
            raise RuntimeError(f"{save_dir}: no Test/*/{metric} in the TensorBoard events; did the run evaluate?")
        results[metric] = 100.0 * events.Scalars(tag)[-1].value
    for tag in tags:
        if tag.startswith("Epoch/"):
            results[tag[len("Epoch/"):]] = events.Scalars(tag)[-1].value
    return results


def run_one(main_py: str, config_file: str, variant: str, seed: int, output: str, overrides: Sequence[str],
            log=print) -> Dict[str, Any]:
    """Train and evaluate one variant with one seed (skipped when its ``run.json`` exists); return its record."""
    directory = run_dir(output, variant, seed)
    done = os.path.join(directory, RESULT)
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    os.makedirs(directory, exist_ok=True)
    command = [sys.executable, main_py, "--config-file", config_file, *overrides, *VARIANTS[variant],
               "train.seed", str(seed), "data.save_dir", directory, "model.resume", "auto"]
    log(f"[ablation] {variant} seed {seed}: {' '.join(command[1:])}")
    start = time.time()
    with open(os.path.join(directory, "stdout.txt"), "a") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise RuntimeError(f"{variant} seed {seed} failed (exit {status}); see {directory}/stdout.txt")
    record = {"variant": variant, "seed": seed, "seconds": round(time.time() - start, 1),
              "overrides": [*overrides, *VARIANTS[variant]], **read_results(directory)}
    with open(done, "w") as f:
        json.dump(record, f, indent=2)
    return record


def _mean_sd(values: Sequence[float]) -> Dict[str, Optional[float]]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def aggregate(records: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Mean and sample standard deviation over seeds, per variant, of every metric and diagnostic."""
    summary: Dict[str, Dict[str, Any]] = {}
    for variant in variants:
        runs = [r for r in records if r["variant"] == variant]
        summary[variant] = {key: _mean_sd([r.get(key) for r in runs]) for key in (*METRICS, *DIAGNOSTICS)}
        summary[variant]["seeds"] = [r["seed"] for r in runs]
    return summary


def _cell(stat: Mapping[str, Any], digits: int) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def markdown(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]],
             header: str = "") -> str:
    """``ablation.md``: mean ± sd per variant, then every run."""
    lines = [header, "", "| variant | seeds | mAP | rank-1 " + HEADERS, "|---|---|---:|---:|" + "---:|" * len(SHOWN)]
    for variant, stats in summary.items():
        lines.append(f"| `{variant}` | {len(stats['seeds'])} | {_cell(stats['mAP'], 1)} | {_cell(stats['rank1'], 1)} | "
                     + " | ".join(_cell(stats[k], 3) for k in SHOWN) + " |")
    lines += ["", "Every run:", "", "| variant | seed | mAP | rank-1 " + HEADERS + " minutes |",
              "|---|---:|---:|---:|" + "---:|" * (len(SHOWN) + 1)]
    for r in records:
        diag = " | ".join("–" if r.get(k) is None else f"{r[k]:.3f}" for k in SHOWN)
        lines.append(f"| `{r['variant']}` | {r['seed']} | {r['mAP']:.1f} | {r['rank1']:.1f} | {diag} | "
                     f"{r['seconds'] / 60:.1f} |")
    return "\n".join(lines).strip() + "\n"


def chart(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """mAP and rank-1 per variant: every seed as a dot, the mean ± sd as a bar with error bars."""
    names = list(summary)
    fig = Figure(figsize=(max(6.0, 1.3 * len(names)), 3.6))
    FigureCanvasAgg(fig)
    for ax, metric in zip(fig.subplots(1, 2), METRICS):
        means = [summary[n][metric]["mean"] or 0.0 for n in names]
        sds = [summary[n][metric]["sd"] or 0.0 for n in names]
        ax.bar(range(len(names)), means, yerr=sds, capsize=4, color="#9ecae1", edgecolor="#3182bd")
        for i, name in enumerate(names):
            seeds = [r[metric] for r in records if r["variant"] == name]
            ax.plot([i] * len(seeds), seeds, "o", color="#08519c", markersize=4)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{metric}: mean ± sd, dots = seeds")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def ablate(main_py: str, config_file: str, output: str, variants: Sequence[str], seeds: Sequence[int],
           overrides: Sequence[str] = (), header: str = "", log=print) -> Dict[str, Any]:
    """Run every variant x seed (seed-major, so that every variant has its first seeds early), then write
    ``ablation.json``, ``ablation.md`` and ``ablation.png`` into ``output``; return the JSON's content."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {sorted(VARIANTS)}")
    records = [run_one(main_py, config_file, v, s, output, overrides, log) for s in seeds for v in variants]
    records.sort(key=lambda r: (list(variants).index(r["variant"]), r["seed"]))
    summary = aggregate(records, variants)
    result = {"config_file": config_file, "overrides": list(overrides), "variants": {v: VARIANTS[v] for v in variants},
              "seeds": list(seeds), "runs": records, "summary": summary}
    with open(os.path.join(output, "ablation.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output, "ablation.md"), "w") as f:
        f.write(markdown(records, summary, header))
    chart(records, summary, os.path.join(output, "ablation.png"))
    log(f"[ablation] wrote {output}/ablation.md, ablation.json and ablation.png ({len(records)} runs)")
    return result
