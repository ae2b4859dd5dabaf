"""An ablation study: the same config trained as several variants and seeds, each run by ``tools/main.py`` in
its own process and directory, then collected into a table, a JSON file and a chart, with every variant compared
to a reference seed by seed (:mod:`torchreid_scal.comparison`).

A run is finished when its directory holds a readable ``run.json`` (written atomically after ``tools/main.py``
exits 0 and its results are read back); repeating the command skips finished runs and resumes interrupted ones
(``model.resume auto``), so an ablation can be stopped and continued at any time. A stop signal (SIGINT,
SIGTERM) reaches the training run, which writes a checkpoint of the step it is at before the ablation exits.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .checkpoint import write_atomically
from .comparison import bootstrap_difference, mean_sd, paired_difference, query_noise
from .engine import PER_QUERY_PREFIX

_PAPER = ["loss.name", "scal", "scal.critic_form", "paper", "scal.critic_activation", "relu",
          "scal.critic_explore_std", "0.0"]
_ORACLE = ["loss.name", "scal", "scal.critic_form", "oracle", "scal.critic_explore_std", "0.0"]
_COMPATIBLE = ["loss.name", "scal", "scal.critic_form", "compatible", "scal.critic_activation", "relu",
               "scal.critic_explore_std", "0.5", "scal.critic_target", "reward"]
_CHANNEL, _SPATIAL = ["model.name", "{backbone}_scal"], ["model.name", "{backbone}_scal_spatial"]
VARIANTS: Dict[str, List[str]] = {
    "bnneck": ["model.name", "{backbone}_bnneck", "loss.name", "triplet"],
    "attention": [*_CHANNEL, "loss.name", "triplet"],
    "scal_paper": [*_CHANNEL, *_PAPER],
    "scal_oracle": [*_CHANNEL, *_ORACLE],
    "scal_compatible": [*_CHANNEL, *_COMPATIBLE],
    "scal_compatible_logp": [*_CHANNEL, *_COMPATIBLE[:-1], "logp"],
    "scal_silu": [*_CHANNEL, *_PAPER[:5], "silu", *_PAPER[6:]],
    "attention_spatial": [*_SPATIAL, "loss.name", "triplet"],
    "scal_paper_spatial": [*_SPATIAL, *_PAPER],
    "scal_oracle_spatial": [*_SPATIAL, *_ORACLE],
    "scal_compatible_spatial": [*_SPATIAL, *_COMPATIBLE],
}
"""Variant name -> the ``KEY VALUE`` overrides that make it (on top of the base config and common overrides;
``{backbone}`` is the ablation's backbone): the BNNeck network without attention, attention trained without a
critic (triplet engine), SCAL as the paper states it, the oracle (the agents follow ``d log p_true/dA``, the
bound of any critic), the compatible critic (learning the reward's or ``log p_true``'s change from a behaviour
pass), the paper's critic with SiLU units; channel, and spatial."""
DEFAULT_VARIANTS = ("bnneck", "attention", "scal_paper", "scal_oracle", "scal_compatible")
METRICS = ("mAP", "rank1")
DIAGNOSTICS = ("critic_alignment", "critic_shared", "critic_heldout_corr", "critic_agreement", "critic_alive",
               "critic_reward_corr")
SHOWN = DIAGNOSTICS[:5]  # the tables' diagnostic columns
HEADERS = "| alignment | shared | held-out corr | agreement | alive |"
RESULT = "run.json"


class AblationStopped(Exception):
    """A stop signal (``signum``) ended the ablation after its training run wrote a checkpoint; the message says
    where."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def cpu_model() -> str:
    """The CPU's model name (``lscpu``), which results and timings depend on."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def run_dir(output: str, variant: str, seed: int) -> str:
    return os.path.join(output, "runs", variant, f"seed{seed}")


def variant_overrides(variant: str, backbone: str) -> List[str]:
    """The ``KEY VALUE`` overrides of ``variant`` for ``backbone``."""
    return [item.format(backbone=backbone) for item in VARIANTS[variant]]


def read_per_query(save_dir: str) -> Dict[str, Any]:
    """Each query's AP and first-match rank from the run's ``per_query-<dataset>.csv`` (the first target), and
    a digest of the query names, so that only runs over the same queries are compared query by query."""
    names = sorted(n for n in os.listdir(save_dir) if n.startswith(PER_QUERY_PREFIX) and n.endswith(".csv"))
    if not names:
        raise RuntimeError(f"{save_dir}: no {PER_QUERY_PREFIX}<dataset>.csv; was it evaluated with test.evaluator "
                           "fast?")
    with open(os.path.join(save_dir, names[0]), newline="") as f:
        rows = list(csv.DictReader(f))
    digest = hashlib.sha1("\n".join(row["query"] for row in rows).encode()).hexdigest()[:12]
    return {"queries": digest, "ap": [round(float(r["ap"]), 5) if r["ap"] else None for r in rows],
            "first_match": [int(r["first_match"]) for r in rows]}


def read_results(save_dir: str) -> Dict[str, Any]:
    """The final test results (``Test/<target>/{mAP,rank1}`` of the first target, in %), the last epoch's
    critic diagnostics (``Epoch/<name>``) from a run's TensorBoard events, and its per-query results."""
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
    results["per_query"] = read_per_query(save_dir)
    return results


def finished(directory: str) -> Optional[Dict[str, Any]]:
    """The run's record, or None when ``run.json`` is missing or unreadable (the run is then done again:
    resumed, or only evaluated when training had finished)."""
    try:
        with open(os.path.join(directory, RESULT)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "mAP" in record else None


def _train(command: Sequence[str], log_path: str, label: str) -> int:
    """Run ``command`` in a session of its own, its output appended to ``log_path``. SIGINT or SIGTERM here is
    passed on as SIGTERM, the child writes a checkpoint after its step, and :class:`AblationStopped` follows;
    a second one is passed on as SIGINT, which stops the child at once."""
    received: List[int] = []
    with open(log_path, "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def forward(signum: int, frame) -> None:
            received.append(signum)
            child.send_signal(signal.SIGTERM if len(received) == 1 else signal.SIGINT)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if received:
        raise AblationStopped(f"{signal.Signals(received[0]).name} received: {label} stopped (exit {status}) "
                              f"after writing a checkpoint, see {log_path}; run the same command to continue",
                              received[0])
    return status


def run_one(main_py: str, config_file: str, variant: str, seed: int, output: str, overrides: Sequence[str],
            backbone: str = "resnet50", log=print) -> Dict[str, Any]:
    """Train and evaluate one variant with one seed (skipped when its ``run.json`` is there); return its record."""
    directory = run_dir(output, variant, seed)
    record = finished(directory)
    if record is not None:
        return record
    os.makedirs(directory, exist_ok=True)
    made = variant_overrides(variant, backbone)
    command = [sys.executable, main_py, "--config-file", config_file, *overrides, *made,
               "train.seed", str(seed), "data.save_dir", directory, "model.resume", "auto"]
    log(f"[ablation] {variant} seed {seed}: {' '.join(command[1:])}")
    start = time.time()
    status = _train(command, os.path.join(directory, "stdout.txt"), f"{variant} seed {seed}")
    if status != 0:
        raise RuntimeError(f"{variant} seed {seed} failed (exit {status}); see {directory}/stdout.txt")
    record = {"variant": variant, "seed": seed, "seconds": round(time.time() - start, 1), "cpu": cpu_model(),
              "overrides": [*overrides, *made], **read_results(directory)}
    write_atomically(os.path.join(directory, RESULT), lambda f: f.write(json.dumps(record, indent=1).encode()))
    return record


def _per_query_ap(runs: Sequence[Mapping[str, Any]]) -> Dict[int, np.ndarray]:
    return {r["seed"]: np.array([np.nan if v is None else v for v in r["per_query"]["ap"]], dtype=np.float64)
            for r in runs if "per_query" in r}


def aggregate(records: Sequence[Mapping[str, Any]], variants: Sequence[str],
              reference: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Per variant: mean and sample standard deviation over seeds of every metric and diagnostic, the query
    noise of mAP (its bootstrap sd over the test queries, mean over runs, in points), and, against
    ``reference``, the paired-by-seed difference of mAP and rank-1 with its t interval and the bootstrap over
    seeds and queries of the mAP difference."""
    summary: Dict[str, Dict[str, Any]] = {}
    by_variant = {v: [r for r in records if r["variant"] == v] for v in variants}
    digests = {r["per_query"]["queries"] for r in records if "per_query" in r}
    if len(digests) > 1:
        raise RuntimeError(f"the runs were evaluated on different query sets ({sorted(digests)}): compare runs of "
                           "one test split only")
    for variant, runs in by_variant.items():
        stats = {key: mean_sd([_finite(r.get(key)) for r in runs]) for key in (*METRICS, *DIAGNOSTICS)}
        stats["seeds"] = [r["seed"] for r in runs]
        noise = [query_noise(ap) for ap in _per_query_ap(runs).values()]
        stats["mAP_query_noise"] = 100.0 * float(np.mean(noise)) if noise else None
        if reference is not None and variant != reference and by_variant.get(reference):
            ref = by_variant[reference]
            stats["vs_reference"] = {
                "reference": reference,
                **{metric: paired_difference({r["seed"]: r[metric] for r in runs},
                                             {r["seed"]: r[metric] for r in ref}) for metric in METRICS},
                "mAP_bootstrap": _scaled(bootstrap_difference(_per_query_ap(runs), _per_query_ap(ref))),
            }
        summary[variant] = stats
    return summary


def _scaled(result: Dict[str, Any]) -> Dict[str, Any]:
    """A bootstrap result of AP differences in points (x100)."""
    if result["mean"] is None:
        return result
    return dict(result, mean=100.0 * result["mean"], ci=[100.0 * c for c in result["ci"]])


def _finite(value: Optional[float]) -> Optional[float]:
    """``value``, or None where a diagnostic does not apply (NaN, e.g. ``alive`` of the compatible critics)."""
    return value if value is not None and math.isfinite(value) else None


def _cell(stat: Mapping[str, Any], digits: int) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _interval(stat: Optional[Mapping[str, Any]]) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("ci") is None:
        return f"{stat['mean']:+.2f}"
    low, high = stat["ci"]
    mark = " *" if low > 0 or high < 0 else ""
    return f"{stat['mean']:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def markdown(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]],
             header: str = "") -> str:
    """``ablation.md``: mean ± sd per variant with the paired intervals against the reference, the critic
    diagnostics, then every run."""
    reference = next((s["vs_reference"]["reference"] for s in summary.values() if "vs_reference" in s), None)
    lines = [header, ""]
    if reference is not None:
        lines += [f"Differences are against `{reference}`, paired by seed, with 95% intervals (t over seeds; "
                  "bootstrap over seeds and queries); * marks an interval that excludes 0.", ""]
    lines += ["Query noise: the sd of one run's mAP when its test queries are drawn again.", "",
              "| variant | seeds | mAP | rank-1 | query noise | Δ mAP (t) | Δ mAP (bootstrap) | Δ rank-1 (t) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for variant, stats in summary.items():
        versus = stats.get("vs_reference", {})
        noise = stats.get("mAP_query_noise")
        lines.append(f"| `{variant}` | {len(stats['seeds'])} | {_cell(stats['mAP'], 1)} | {_cell(stats['rank1'], 1)} | "
                     f"{'–' if noise is None else f'{noise:.2f}'} | {_interval(versus.get('mAP'))} | "
                     f"{_interval(versus.get('mAP_bootstrap'))} | {_interval(versus.get('rank1'))} |")
    lines += ["", "Critic diagnostics (last epoch, held-out images):", "", "| variant " + HEADERS,
              "|---|" + "---:|" * len(SHOWN)]
    for variant, stats in summary.items():
        lines.append(f"| `{variant}` | " + " | ".join(_cell(stats[k], 3) for k in SHOWN) + " |")
    lines += ["", "Every run:", "", "| variant | seed | mAP | rank-1 " + HEADERS + " minutes |",
              "|---|---:|---:|---:|" + "---:|" * (len(SHOWN) + 1)]
    for r in records:
        diag = " | ".join("–" if _finite(r.get(k)) is None else f"{r[k]:.3f}" for k in SHOWN)
        lines.append(f"| `{r['variant']}` | {r['seed']} | {r['mAP']:.1f} | {r['rank1']:.1f} | {diag} | "
                     f"{r['seconds'] / 60:.1f} |")
    return "\n".join(lines).strip() + "\n"


def chart(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """Left: mAP per variant, every seed a dot, the mean ± sd a bar. Right: each variant's paired mAP difference
    to the reference with its 95% t interval (bootstrap interval beside it, hollow)."""
    names = list(summary)
    fig = Figure(figsize=(max(8.0, 2.2 * len(names)), 3.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    means = [summary[n]["mAP"]["mean"] or 0.0 for n in names]
    sds = [summary[n]["mAP"]["sd"] or 0.0 for n in names]
    left.bar(range(len(names)), means, yerr=sds, capsize=4, color="#9ecae1", edgecolor="#3182bd")
    for i, name in enumerate(names):
        seeds = [r["mAP"] for r in records if r["variant"] == name]
        left.plot([i] * len(seeds), seeds, "o", color="#08519c", markersize=4)
    left.set_title("mAP (%): mean ± sd, dots = seeds")
    compared = [n for n in names if summary[n].get("vs_reference", {}).get("mAP", {}).get("ci")]
    for i, name in enumerate(compared):
        versus = summary[name]["vs_reference"]
        for offset, stat, style in ((-0.1, versus["mAP"], "o"), (0.1, versus["mAP_bootstrap"], "s")):
            if stat.get("ci"):
                low, high = stat["ci"]
                right.errorbar([i + offset], [stat["mean"]], yerr=[[stat["mean"] - low], [high - stat["mean"]]],
                               fmt=style, capsize=4, color="#3182bd", mfc="#3182bd" if style == "o" else "white")
    right.axhline(0.0, color="grey", linewidth=0.8)
    reference = summary[compared[0]]["vs_reference"]["reference"] if compared else "the reference"
    right.set_title(f"Δ mAP vs {reference}, 95% intervals:\nt (●), bootstrap (□)")
    for ax, labels in ((left, names), (right, compared)):
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def ablate(main_py: str, config_file: str, output: str, variants: Sequence[str], seeds: Sequence[int],
           overrides: Sequence[str] = (), header: str = "", backbone: str = "resnet50",
           reference: Optional[str] = "attention", train: bool = True, log=print) -> Dict[str, Any]:
    """Run every variant x seed (seed-major, so that every variant has its first seeds early), then write
    ``ablation.json``, ``ablation.md`` and ``ablation.png`` into ``output``; return the JSON's content. With
    ``train=False`` nothing is run: the tables hold the finished runs among them (variants may then have
    different numbers of seeds)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {sorted(VARIANTS)}")
    for name, items in (("variants", variants), ("seeds", seeds)):
        if len(set(items)) != len(items) or not items:
            raise ValueError(f"{name} must be given once each, at least one: got {list(items)}")
    if reference is not None and reference not in variants:
        reference = None
    if train:
        records = [run_one(main_py, config_file, v, s, output, overrides, backbone, log)
                   for s in seeds for v in variants]
    else:
        records = [r for r in (finished(run_dir(output, v, s)) for s in seeds for v in variants) if r is not None]
        if not records:
            raise RuntimeError(f"no finished run of {list(variants)} with seeds {list(seeds)} in {output}")
        variants = [v for v in variants if any(r["variant"] == v for r in records)]
        reference = reference if reference in variants else None
    records.sort(key=lambda r: (list(variants).index(r["variant"]), r["seed"]))
    summary = aggregate(records, variants, reference)
    result = {"config_file": config_file, "overrides": list(overrides), "backbone": backbone,
              "variants": {v: variant_overrides(v, backbone) for v in variants}, "seeds": list(seeds),
              "reference": reference, "runs": records, "summary": summary}
    write_atomically(os.path.join(output, "ablation.json"), lambda f: f.write(json.dumps(result, indent=1).encode()))
    write_atomically(os.path.join(output, "ablation.md"), lambda f: f.write(markdown(records, summary, header).encode()))
    chart(records, summary, os.path.join(output, "ablation.png"))
    log(f"[ablation] wrote {output}/ablation.md, ablation.json and ablation.png ({len(records)} runs)")
    return result
