"""torchreid_scal.report: which images a report shows, and a report on a split without rewards."""
from __future__ import annotations

import json
import math
import os

import torch

from torchreid_scal.inspection import REWARD_KEYS, Inspection
from torchreid_scal.report import attention_report, example_groups
from torchreid_scal.rewards import Rewards


def inspection(values, total):
    total = torch.tensor(total)
    return Inspection("channel", [4], torch.tensor([values]), Rewards(total.clamp(max=1), total.clamp(min=1) - 1,
                                                                       total), torch.zeros(len(values)).long(),
                      [""] * len(values))


def test_examples_are_grouped_by_reward_so_that_rewards_differ_between_groups():
    ins = inspection([0.9, 0.8, 0.7, 0.1, 0.5, 0.2], [2.0, 2.0, 2.0, 0.0, 1.0, 1.0])
    groups = example_groups(ins, examples=1)
    assert [g["reward"] for g in groups] == [2.0, 1.0, 0.0]
    assert [(g["best"], g["worst"]) for g in groups] == [([0], [2]), ([4], [5]), ([3], [])]


def test_examples_without_rewards_are_the_highest_and_lowest_values():
    nan = math.nan
    ins = inspection([0.3, 0.9, 0.1, 0.5], [nan, nan, nan, nan])
    assert example_groups(ins, examples=2) == [{"reward": None, "best": [1, 3], "worst": [2, 0]}]


def test_report_on_the_query_split_has_no_rewards(trained_run, tmp_path):
    report = attention_report(trained_run.cfg, trained_run.weights, str(tmp_path), split="query", examples=1,
                              events=str(tmp_path))
    assert report["num_images"] == 50 and report["num_rewarded"] == 0
    assert all(report[key] is None for key in REWARD_KEYS) and report["reliability"] is None
    assert report["training_curves"] is None and not os.path.exists(tmp_path / "training_curves.png")
    assert json.loads((tmp_path / "report.json").read_text()) == report
    page = (tmp_path / "report.html").read_text()
    assert "Rewards are undefined on this split" in page and "No Epoch/* TensorBoard scalars" in page
    (group,) = report["examples"]
    assert group["reward"] is None and group["best"][0]["reward"] is None
    assert group["best"][0]["value"] >= group["worst"][0]["value"]
    assert os.path.isfile(tmp_path / group["worst"][0]["png"]) and "diagnostics" not in report
    assert not os.path.isabs(report["weights"]) and not os.path.isabs(group["best"][0]["path"])
