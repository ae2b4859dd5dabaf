"""torchreid_scal.ablation: mean ± sd per variant, the tables and the chart, from hand-made run records."""
from __future__ import annotations

import statistics

import cv2
import pytest

from torchreid_scal.ablation import DIAGNOSTICS, VARIANTS, aggregate, chart, markdown


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
    assert text.count("| `scal_paper` | ") == 3  # the summary row and one row per run
    for table in (t for t in text.split("\n\n") if t.startswith("|")):  # every row has the header's cells
        assert len({row.count("|") for row in table.splitlines()}) == 1, table
    chart(RECORDS, summary, str(tmp_path / "chart.png"))
    assert cv2.imread(str(tmp_path / "chart.png")) is not None


def test_variants_name_the_paper_and_the_grounded_critic_for_both_attentions():
    assert {"bnneck", "attention", "scal_paper", "scal_grounded", "attention_spatial", "scal_paper_spatial",
            "scal_grounded_spatial"} <= set(VARIANTS)
    assert "critic_alignment" in DIAGNOSTICS


def test_each_critic_variant_changes_only_what_its_name_says_against_the_papers():
    def keys(variant):
        pairs = VARIANTS[variant]
        return dict(zip(pairs[::2], pairs[1::2]))

    paper = keys("scal_paper")
    changed = {v: {k for k, value in keys(v).items() if paper.get(k) != value}
               for v in ("scal_silu", "scal_counterfactual", "scal_grounded")}
    assert changed == {"scal_silu": {"scal.critic_activation"},
                       "scal_counterfactual": {"scal.critic_activation", "scal.critic_counterfactual"},
                       "scal_grounded": {"scal.critic_activation", "scal.critic_counterfactual",
                                         "scal.critic_explore_std"}}
