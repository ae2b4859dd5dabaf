"""What ``tools/visualize_attention.py`` and ``tools/attention_report.py`` write: attention figures per image,
and a report (JSON and one HTML page with its pictures beside it) of how the critics behave on a split.

Paths in the report are relative: pictures, weights and event files to the report's folder (so that a run's
folder can be moved or shared as a whole), dataset images to ``data.root``.
"""
from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from yacs.config import CfgNode as CN

from .critic_diagnostics import diagnose_critics
from .datasets import DataError
from .datasets.splits import LABELLED_SPLITS, eval_transform, fixed_batch, make_loader, split_dataset
from .figures import actmap_grid, attention_figure, plot_training_curves, save_rgb, to_rgb
from .inspection import (ImageFiles, Inspection, activation_maps, inspect_images, load_scal, read_epoch_scalars,
                         summarize)
from .runner import build_datamanager, select_device

QUERY_IMAGES = 16  # images visualised from the query split unless a number is given
DIAGNOSTIC_IMAGES = 256  # images of the split scored by the critic diagnostics
DIAGNOSED = ("alignment", "shared", "agreement", "alive")  # per-stage columns of the report


def figure_of(ins: Inspection, i: int, mean: Sequence[float], std: Sequence[float], name: str = "") -> np.ndarray:
    """The attention figure of image ``i`` of an inspection made with ``keep_maps``, titled with its identity,
    critic values and reward (where defined)."""
    if ins.images is None or ins.maps is None:
        raise ValueError("figures need an inspection made with keep_maps=True")
    values = dict(zip(ins.stages, ins.values[:, i].tolist()))
    reward = ""
    if ins.known[i]:
        r_c, r_a, r = (int(x[i]) for x in ins.rewards)
        reward = f"   R = {r} (R_c = {r_c}, R_a = {r_a})"
    pid = int(ins.pids[i])
    who = name or ("image" if pid < 0 else f"pid {pid}")
    kind = "spatial attention A_k" if ins.weights is None else "attended / unattended activation"
    title = f"{who}: {kind}, mean critic value V = {float(ins.value[i]):.3f}{reward}"
    stage_titles = [f"stage {k}" + (f": V{k} = {values[k]:.3f}" if k in values else ": no critic")
                    for k in range(len(ins.maps))]
    weights = None if ins.weights is None else [w[i] for w in ins.weights]
    return attention_figure(to_rgb(ins.images[i], mean, std), title, stage_titles, [m[i] for m in ins.maps], weights)


def output_names(paths: Sequence[str]) -> List[str]:
    """One output name per image: the file name without its extension, or with it where two images share a stem
    (``img.tiff`` and ``img.webp`` would both become ``img.png``); ``imageNNNNN`` for an image without a path."""
    stems = [os.path.splitext(os.path.basename(path))[0] if path else f"image{i:05d}" for i, path in enumerate(paths)]
    shared = {stem for stem in stems if stems.count(stem) > 1}
    return [os.path.basename(path) if stem in shared and path else stem for stem, path in zip(stems, paths)]


def visualize(cfg: CN, weights: str, output: str, images: Optional[str] = None,
              num_images: Optional[int] = None) -> List[str]:
    """Attention figures (``output/<name>.png``) and torchreid-style activation maps (``output/actmap/<name>.jpg``)
    for the files of the folder ``images`` (all by default) or the query split of the first target (the first
    ``QUERY_IMAGES`` by default); returns the figures' paths. Query pids are not classes: no rewards."""
    device = select_device(cfg)
    model, critics = load_scal(cfg, weights, device)
    if images:
        dataset: Dataset = ImageFiles(images, eval_transform(cfg))
    else:
        dataset = split_dataset(build_datamanager(cfg, device), "query")
    count = num_images if num_images is not None else (len(dataset) if images else QUERY_IMAGES)
    ins = inspect_images(model, critics, make_loader(cfg, dataset, range(min(count, len(dataset)))))
    actmaps = activation_maps(model, ins.images, cfg.test.batch_size)
    mean, std = list(cfg.data.norm_mean), list(cfg.data.norm_std)
    written = []
    for i, name in enumerate(output_names(ins.paths)):
        written.append(save_rgb(os.path.join(output, f"{name}.png"), figure_of(ins, i, mean, std, name)))
        save_rgb(os.path.join(output, "actmap", f"{name}.jpg"), actmap_grid(to_rgb(ins.images[i], mean, std),
                                                                            actmaps[i]))
    print(f"Wrote {len(written)} attention figures to {output} and activation maps to "
          f"{os.path.join(output, 'actmap')}")
    return written


def example_groups(ins: Inspection, examples: int) -> List[Dict[str, Any]]:
    """Which images the report shows: per reward value present (highest first), the ``examples`` highest- and
    lowest-scored images with that reward, so that images of different rewards are side by side and one sees
    whether the critic scores them apart; without rewards, the highest- and lowest-scored images overall."""
    if not ins.known.any():
        order = ins.value.argsort(descending=True).tolist()
        return [{"reward": None, "best": order[:examples], "worst": order[::-1][:examples]}]
    groups = []
    for reward in sorted(set(ins.rewards.total[ins.known].tolist()), reverse=True):
        members = torch.nonzero(ins.rewards.total == reward).flatten()
        order = members[ins.value[members].argsort(descending=True)].tolist()
        worst = [i for i in order[::-1][:examples] if i not in order[:examples]]
        groups.append({"reward": reward, "best": order[:examples], "worst": worst})
    return groups


def _relative(path: str, start: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start))


def _image_record(ins: Inspection, i: int, png: str, root: str) -> Dict[str, Any]:
    rewards = dict(zip(("reward_c", "reward_a", "reward"), (float(r[i]) for r in ins.rewards)))
    return {"path": _relative(ins.paths[i], root) if ins.paths[i] else "", "pid": int(ins.pids[i]), "png": png,
            "value": float(ins.value[i]), "values": {str(k): float(v) for k, v in zip(ins.stages, ins.values[:, i])},
            **rewards}


def _plain(value: Any) -> Any:
    """NaN becomes None, recursively, so that the JSON is standard (browsers reject NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def attention_report(cfg: CN, weights: str, output: str, split: str = "train", bins: int = 5,
                     events: Optional[str] = None, examples: int = 2) -> Dict[str, Any]:
    """Inspect every image of ``split`` and write ``output/report.json`` and ``output/report.html``: the critics'
    values and how they predict the reward, the diagnostics of their gradient (:func:`diagnose_critics`, on up
    to ``DIAGNOSTIC_IMAGES`` images of a labelled split), the example images of :func:`example_groups` under
    ``output/images/`` and, when the run's event files exist, ``output/training_curves.png``; returns the
    report. ``events`` defaults to the run's save_dir, the parent of the weights' ``model/`` folder."""
    device = select_device(cfg)
    model, critics = load_scal(cfg, weights, device)
    datamanager = build_datamanager(cfg, device)
    dataset = split_dataset(datamanager, split)
    classes = model.classifier.out_features
    labelled = split in LABELLED_SPLITS
    if labelled and datamanager.num_train_pids != classes:
        raise DataError(f"{weights} classifies {classes} identities but the training split of "
                        f"{list(cfg.data.sources)} has {datamanager.num_train_pids}: rewards need the dataset "
                        "the model was trained on")
    ins = inspect_images(model, critics, make_loader(cfg, dataset), pids_are_classes=labelled, keep_maps=False)
    events = events or os.path.dirname(os.path.dirname(os.path.abspath(weights)))
    os.makedirs(output, exist_ok=True)
    report: Dict[str, Any] = {"weights": _relative(weights, output), "model": cfg.model.name,
                              "attention": model.attention, "split": split, "bins": bins,
                              "events_dir": _relative(events, output), **summarize(ins, bins)}
    if labelled:
        images, pids = fixed_batch(dataset, DIAGNOSTIC_IMAGES)
        report["diagnostics"] = diagnose_critics(model, critics, images.to(device), pids.to(device))
    mean, std = list(cfg.data.norm_mean), list(cfg.data.norm_std)
    report["examples"] = []
    for g, group in enumerate(example_groups(ins, examples)):
        picked = group["best"] + group["worst"]
        shown = inspect_images(model, critics, make_loader(cfg, dataset, picked), pids_are_classes=labelled)
        records = []
        for i in range(len(picked)):
            png = f"images/group{g}_{i}.png"
            save_rgb(os.path.join(output, png), figure_of(shown, i, mean, std))
            records.append(_image_record(shown, i, png, cfg.data.root))
        best = len(group["best"])
        report["examples"].append({"reward": group["reward"], "best": records[:best], "worst": records[best:]})
    curves = plot_training_curves(read_epoch_scalars(events), os.path.join(output, "training_curves.png"))
    report["training_curves"] = "training_curves.png" if curves else None
    report = _plain(report)
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    with open(os.path.join(output, "report.html"), "w") as f:
        f.write(report_html(report))
    print(f"Wrote {os.path.join(output, 'report.html')} ({report['num_images']} images of the {split} split)")
    return report


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(item: Mapping[str, Any], label: str) -> str:
    return (f'<figure><img src="{html.escape(item["png"])}" alt="{label}"><figcaption>{label}: '
            f'{html.escape(item["path"])}, V = {_num(item["value"])}, R = {_num(item["reward"])}</figcaption></figure>')


def report_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page whose pictures are relative links next to it."""
    stages = [str(k) for k in report["critic_stages"]]
    diagnostics = report.get("diagnostics")
    parts = [
        f"<h1>SCAL attention report</h1><p>{html.escape(report['weights'])}<br>model {html.escape(report['model'])} "
        f"({html.escape(report['attention'])} attention), {html.escape(report['split'])} split: "
        f"{report['num_images']} images, {report['num_rewarded']} with a defined reward.</p>",
        "<h2>Critic per stage</h2>",
        "<p>alignment: cosine of dV/dA with d log p(true class)/dA (0 = no useful direction); shared: the "
        "alignment a critic ignoring the image could reach at best; agreement: share of images where the critic "
        "orders the agents' map and no attention as R_a does; alive: share of hidden units that fire on some "
        "image.</p>" if diagnostics else "",
        _table(["stage", "mean V_k", "corr(V_k, R)", *DIAGNOSED],
               [[k, report["critic_value_per_stage"][k], report.get(f"critic_reward_corr_stage{k}")]
                + [(diagnostics or {}).get(f"{name}_stage{k}") for name in DIAGNOSED] for k in stages]
               + [["mean", report["mean_critic_value"], report["critic_reward_corr"]]
                  + [(diagnostics or {}).get(f"critic_{name}") for name in DIAGNOSED]]),
        "<h2>Critic vs reward</h2>",
        _table(["critic MSE", "corr(mean V, R)", "mean R"],
               [[report["critic_mse"], report["critic_reward_corr"], report["mean_reward"]]]),
    ]
    if report["reliability"]:
        parts += ["<p>Reliability: mean reward per bin of the stage-mean critic value.</p>",
                  _table(["V from", "V to", "images", "mean V", "mean R"],
                         [[b["low"], b["high"], b["count"], b["mean_value"], b["mean_reward"]]
                          for b in report["reliability"]])]
    else:
        parts.append("<p>Rewards are undefined on this split (its identities are not classifier classes).</p>")
    parts += ["<h2>Did attention help?</h2>",
              _table(["attention helped (R_a = 1)", "classified correctly (R_c = 1)"],
                     [[report["attention_helped_rate"], report["classification_rate"]]])]
    for group in report["examples"]:
        reward = group["reward"]
        parts.append("<h2>Highest- and lowest-scored images</h2>" if reward is None
                     else f"<h2>Images with reward R = {reward:.0f}: highest and lowest critic value</h2>")
        parts += [_figure(item, "highest") for item in group["best"]]
        parts += [_figure(item, "lowest") for item in group["worst"]]
    parts.append("<h2>Training curves</h2>")
    if report["training_curves"]:
        parts.append(f'<img src="{html.escape(report["training_curves"])}" alt="training curves">')
    else:
        parts.append(f"<p>No Epoch/* TensorBoard scalars in {html.escape(report['events_dir'])}.</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}figure{margin:.5em 0}"
             "img{max-width:100%}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>SCAL attention report</title>'
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
