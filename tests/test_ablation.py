"""torchreid_scal.ablation and .comparison: mean ± sd per variant, paired intervals against a reference, the
tables and the chart, from hand-made run records."""
from __future__ import annotations

import json
import statistics

import cv2
import numpy as np
import pytest

from torchreid_scal.ablation import (DEFAULT_VARIANTS, DIAGNOSTICS, VARIANTS, ablate, aggregate, chart, finished,
                                     markdown, variant_overrides)
from torchreid_scal.comparison import bootstrap_difference, query_noise


def record(variant, seed, m_ap, rank1, alignment=None):
    return {"variant": variant, "seed": seed, "mAP": m_ap, "rank1": rank1, "seconds": 60.0,
            "critic_alignment": alignment}


RECORDS = [record("bnneck", 1, 30.0, 40.0), record("bnneck", 2, 34.0, 44.0), record("bnneck", 3, 32.0, 48.0),
           record("scal_paper", 1, 35.0, 50.0, 0.01), record("scal_paper", 2, 37.0, 52.0, 0.03)]


def test_mean_and_sample_sd_per_variant():
    summary = aggregate(RECORDS, ["bnneck", "scal_paper"])
    assert summary["bnneck"]["mAP"] == {"mean": 32.0, "sd": pytest.approx(2.0), "n": 3}
    assert summary["bnneck"]["rank1"]["sd"] == pytest.approx(statistics.stdev([40.0, 44.0, 48.0]))
    assert summary["bnneck"]["critic_alignment"] == {"mean": None, "sd": None, "n": 0}
    assert summary["scal_paper"]["critic_alignment"]["mean"] == pytest.approx(0.02)
    assert summary["scal_paper"]["seeds"] == [1, 2]


def test_markdown_lists_every_run_and_the_summary(tmp_path):
    summary = aggregate(RECORDS, ["bnneck", "scal_paper"])
    text = markdown(RECORDS, summary, "header line")
    assert text.startswith("header line")
    assert "| `bnneck` | 3 | 32.0 ± 2.0 | 44.0 ± 4.0 |" in text
    assert text.count("| `scal_paper` | ") == 4  # the summary row, the diagnostics row and one row per run
    assert "Differences are against" not in text  # no reference given
    for table in (t for t in text.split("\n\n") if t.startswith("|")):  # every row has the header's cells
        assert len({row.count("|") for row in table.splitlines()}) == 1, table
    chart(RECORDS, summary, str(tmp_path / "chart.png"))
    assert cv2.imread(str(tmp_path / "chart.png")) is not None


def test_a_diagnostic_that_does_not_apply_is_a_dash_not_nan():
    records = [dict(record("scal_compatible", seed, 30.0, 40.0, 0.01), critic_alive=float("nan")) for seed in (1, 2)]
    summary = aggregate(records, ["scal_compatible"])
    assert summary["scal_compatible"]["critic_alive"]["mean"] is None
    text = markdown(records, summary, "header")
    assert "nan" not in text and "| 0.010 ± 0.000 |" in text


def test_variants_name_the_decisive_comparison_for_both_attentions():
    assert {"bnneck", "attention", "scal_paper", "scal_oracle", "scal_compatible", "attention_spatial",
            "scal_paper_spatial"} <= set(VARIANTS)
    assert set(DEFAULT_VARIANTS) <= set(VARIANTS) and "critic_alignment" in DIAGNOSTICS
    assert variant_overrides("scal_oracle", "osnet_x0_25")[:2] == ["model.name", "osnet_x0_25_scal"]
    assert variant_overrides("bnneck", "resnet18")[1] == "resnet18_bnneck"


def test_each_critic_variant_changes_only_what_its_name_says_against_the_papers():
    def keys(variant):
        pairs = VARIANTS[variant]
        return dict(zip(pairs[::2], pairs[1::2]))

    paper = keys("scal_paper")
    changed = {v: {k for k, value in keys(v).items() if paper.get(k) != value}
               for v in ("scal_silu", "scal_oracle", "scal_compatible", "scal_compatible_logp")}
    assert changed == {"scal_silu": {"scal.critic_activation"},
                       "scal_oracle": {"scal.critic_form"},
                       "scal_compatible": {"scal.critic_form", "scal.critic_explore_std", "scal.critic_target"},
                       "scal_compatible_logp": {"scal.critic_form", "scal.critic_explore_std", "scal.critic_target"}}
    assert keys("scal_compatible")["scal.critic_target"] == "reward"
    assert keys("scal_compatible_logp")["scal.critic_target"] == "logp"


def per_query(ap):
    return {"queries": "q", "ap": list(ap), "first_match": [1] * len(ap)}


def test_paired_differences_against_the_reference_with_t_and_bootstrap_intervals():
    """Three seeds; scal_paper's AP is attention's plus 0.01, 0.02, 0.005 on every query (by seed)."""
    base = {1: [0.2, 0.4, 0.6, 0.8], 2: [0.1, 0.5, 0.5, 0.9], 3: [0.3, 0.3, 0.7, 0.7]}
    shift = {1: 0.01, 2: 0.02, 3: 0.005}
    records = []
    for seed, ap in base.items():
        records.append(dict(record("attention", seed, 100 * sum(ap) / 4, 50.0), per_query=per_query(ap)))
        moved = [a + shift[seed] for a in ap]
        records.append(dict(record("scal_paper", seed, 100 * sum(moved) / 4, 50.0 + seed), per_query=per_query(moved)))
    versus = aggregate(records, ["attention", "scal_paper"], reference="attention")["scal_paper"]["vs_reference"]
    diffs = [1.0, 2.0, 0.5]
    half = 4.302652729911275 * statistics.stdev(diffs) / 3 ** 0.5  # t(0.975, 2 degrees of freedom)
    assert versus["mAP"]["diffs"] == pytest.approx(diffs)
    assert versus["mAP"]["ci"] == pytest.approx([statistics.fmean(diffs) - half, statistics.fmean(diffs) + half])
    assert versus["rank1"]["diffs"] == pytest.approx([1.0, 2.0, 3.0])
    boot = versus["mAP_bootstrap"]
    assert boot["mean"] == pytest.approx(statistics.fmean(diffs))
    assert 0.5 - 1e-9 <= boot["ci"][0] < boot["ci"][1] <= 2.0 + 1e-9  # only the seeds vary the difference


def test_bootstrap_of_a_constant_difference_is_that_constant_and_query_noise_is_the_se():
    rng = np.random.default_rng(0)
    a = {s: rng.random(500) for s in (1, 2)}
    boot = bootstrap_difference({s: v + 0.03 for s, v in a.items()}, a, reps=500)
    assert boot["ci"] == pytest.approx([0.03, 0.03])
    coin = np.tile([0.0, 1.0], 500)  # AP 0 or 1, half each: the mean's sd over redrawn queries is 0.5 / sqrt(1000)
    assert query_noise(coin) == pytest.approx(0.5 / 1000 ** 0.5, rel=0.1)
    assert query_noise(np.full(10, 0.4)) == pytest.approx(0.0, abs=1e-12)


def test_runs_over_other_queries_are_not_compared():
    records = [dict(record("attention", 1, 1.0, 1.0), per_query=per_query([0.1])),
               dict(record("scal_paper", 1, 1.0, 1.0), per_query=dict(per_query([0.1]), queries="other"))]
    with pytest.raises(RuntimeError, match="different query sets"):
        aggregate(records, ["attention", "scal_paper"], reference="attention")


def test_an_unreadable_run_record_counts_as_unfinished(tmp_path):
    (tmp_path / "run.json").write_text("")
    assert finished(str(tmp_path)) is None
    (tmp_path / "run.json").write_text('{"variant": "attention", "mAP": 3.0}')
    assert finished(str(tmp_path))["mAP"] == 3.0


def test_repeated_seeds_or_variants_are_refused(tmp_path):
    for variants, seeds in ((["attention", "attention"], [1]), (["attention"], [1, 1])):
        with pytest.raises(ValueError, match="once each"):
            ablate("main.py", "cfg.yaml", str(tmp_path), variants, seeds)


def test_report_only_tabulates_the_finished_runs_and_trains_nothing(tmp_path):
    for variant, seed, m_ap in (("attention", 1, 20.0), ("attention", 2, 22.0), ("scal_paper", 1, 21.0)):
        directory = tmp_path / "runs" / variant / f"seed{seed}"
        directory.mkdir(parents=True)
        (directory / "run.json").write_text(json.dumps(dict(record(variant, seed, m_ap, 30.0),
                                                            per_query=per_query([m_ap / 100]))))
    result = ablate("no-such-main.py", "cfg.yaml", str(tmp_path), ["attention", "scal_paper", "bnneck"], [1, 2, 3],
                    train=False, log=lambda line: None)
    assert list(result["summary"]) == ["attention", "scal_paper"]  # bnneck has no finished run
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("attention", 1), ("attention", 2),
                                                                     ("scal_paper", 1)]
    assert result["summary"]["scal_paper"]["vs_reference"]["mAP"]["diffs"] == [1.0]
    assert (tmp_path / "ablation.md").read_text().count("| `attention` | ") == 4
