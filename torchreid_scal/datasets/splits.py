"""Evaluation views of a torchreid data manager's splits, through the test transforms (no augmentation).

Rewards need the true class, so only images whose pids are classifier classes can be scored: the sources'
training images and, for a dataset that has them (``scal_demo``), held-out images of the training
identities. Query and gallery hold other people.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from yacs.config import CfgNode as CN

from .. import _torchreid
from .checks import DataError

SPLITS = ("train", "heldout", "query", "gallery")
LABELLED_SPLITS = ("train", "heldout")  # splits whose pids are classifier classes


def eval_transform(cfg: CN):
    """torchreid's test transform for the configured size and normalisation."""
    return _torchreid.data.transforms.build_transforms(cfg.data.height, cfg.data.width, transforms=[],
                                                       norm_mean=list(cfg.data.norm_mean),
                                                       norm_std=list(cfg.data.norm_std))[1]


def make_loader(cfg: CN, dataset: Dataset, indices: Optional[Sequence[int]] = None) -> DataLoader:
    """An unshuffled loader over ``dataset`` (or its ``indices``) with the test batch size."""
    return DataLoader(dataset if indices is None else Subset(dataset, list(indices)), batch_size=cfg.test.batch_size,
                      shuffle=False, num_workers=cfg.data.workers)


def split_dataset(datamanager, split: str) -> Dataset:
    """A split through the test transforms: the sources' training images or, for a dataset that has them
    (``scal_demo``), held-out images of the training identities (labels are classifier classes in both);
    or the query / gallery of the first target."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if split not in LABELLED_SPLITS:
        return datamanager.test_loader[datamanager.targets[0]][split].dataset
    dataset = copy.copy(datamanager.train_loader.dataset)
    dataset.transform, dataset.k_tfm = datamanager.transform_te, 1
    if split == "heldout":
        if not getattr(dataset, "heldout", None):
            raise DataError(f"{list(datamanager.sources)} has no held-out images of its training identities "
                            "(only scal_demo does); use --split train")
        dataset.data = dataset.heldout
    return dataset


def diagnostic_dataset(datamanager) -> Dataset:
    """Labelled images the model does not train on where the dataset has them (``scal_demo``'s held-out
    images), else the training images; through the test transforms either way."""
    train = split_dataset(datamanager, "train")
    return split_dataset(datamanager, "heldout") if getattr(train, "heldout", None) else train


def fixed_batch(dataset: Dataset, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``size`` images of ``dataset`` (and their pids), spread evenly over it: the same images every time."""
    count = min(size, len(dataset))
    items = [dataset[i * len(dataset) // count] for i in range(count)]
    return torch.stack([item["img"] for item in items]), torch.tensor([int(item["pid"]) for item in items])
