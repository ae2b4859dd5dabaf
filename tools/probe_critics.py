r"""Probe which critic forms can learn a useful gradient, offline, on a frozen trained network.

    python tools/probe_critics.py --config-file configs/scal_demo.yaml --weights RUN/model/model.pth.tar-25 \
        [--forms paper,paper_explore,conditioned,compatible,compatible_logp] [--draws 8] [--epochs 20] \
        [--explore-std 0.5] [--output probe.json] [KEY VALUE ...]

Caches the network's passes over the training images (through the test transforms) with several draws of
behaviour noise around the agents' maps, fits stage critics of each form to them, and prints per form the
held-out alignment of ``dV_k/dA_k`` with ``d log p(true class)/dA_k`` (stages 0-4 and mean), ``shared`` (the
best an image-blind direction reaches) and the held-out correlation with the reward; see
torchreid_scal/critic_probe.py. Held-out images: scal_demo's unseen images of the training identities (other
datasets: the training images). Errors exit as in tools/main.py.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from torchreid_scal.checkpoint import load_checkpoint, state_dict_of, write_atomically
from torchreid_scal.cli import run_tool
from torchreid_scal.config import load_config
from torchreid_scal.critic_probe import FORMS, probe
from torchreid_scal.datasets.splits import diagnostic_dataset, fixed_batch, split_dataset
from torchreid_scal.runner import build_datamanager, build_trained_model, select_device


def _forms(text: str):
    names = [f for f in text.split(",") if f]
    unknown = [f for f in names if f not in FORMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown forms {unknown}; choose from {','.join(FORMS)}")
    return names


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="YAML config the model was trained with")
    parser.add_argument("--weights", required=True, help="a checkpoint of an attention model (model.pth.tar-N)")
    parser.add_argument("--forms", type=_forms, default=list(FORMS), help=f"critic forms ({','.join(FORMS)})")
    parser.add_argument("--draws", type=_positive(int), default=8, help="behaviour draws per image (8)")
    parser.add_argument("--epochs", type=_positive(int), default=20, help="passes over the cached data (20)")
    parser.add_argument("--explore-std", type=_positive(float), default=0.5,
                        help="behaviour noise in logit space (0.5, the scal_compatible variant's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, the critics and the batches")
    parser.add_argument("--output", default="", help="write the results to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def table(results) -> str:
    """Markdown: per form, the alignment per stage and its mean, shared, held-out correlation, final loss."""
    stages = sorted({int(k[len("alignment_stage"):]) for r in results.values() for k in r
                     if k.startswith("alignment_stage")})
    lines = ["| form | " + " | ".join(f"stage {k}" for k in stages) + " | alignment | shared | held-out corr | loss |",
             "|---|" + "---:|" * (len(stages) + 4)]
    for form, r in results.items():
        lines.append(f"| `{form}` | " + " | ".join(f"{r[f'alignment_stage{k}']:+.3f}" for k in stages)
                     + f" | {r['critic_alignment']:+.3f} | {r['critic_shared']:+.3f} | "
                       f"{r['critic_heldout_corr']:+.3f} | {r['final_loss']:.4f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config_file, args.opts)
    device = select_device(cfg)
    model = build_trained_model(cfg, state_dict_of(load_checkpoint(args.weights), source=args.weights),
                                args.weights).to(device)
    datamanager = build_datamanager(cfg, device)
    train_set, heldout_set = split_dataset(datamanager, "train"), diagnostic_dataset(datamanager)
    train = [t.to(device) for t in fixed_batch(train_set, len(train_set))]
    heldout = [t.to(device) for t in fixed_batch(heldout_set, len(heldout_set))]
    torch.manual_seed(args.seed)
    order = torch.randperm(len(train[0])).to(device)  # batches mix identities, as P x K batches do
    results = probe(model, [t[order] for t in train], heldout, args.forms, draws=args.draws,
                    explore_std=args.explore_std, epochs=args.epochs, activation=cfg.scal.critic_activation,
                    seed=args.seed)
    print(table(results))
    if args.output:
        record = {"weights": args.weights, "settings": {k: v for k, v in vars(args).items() if k != "opts"},
                  "opts": args.opts, "train_images": len(train[0]), "heldout_images": len(heldout[0]),
                  "results": results}
        write_atomically(args.output, lambda f: f.write(json.dumps(record, indent=1).encode()))


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
