"""Identity and camera from Market-1501-style file names (``<pid>_c<camera>...jpg``), read from the file's own name.

torchreid's Market-1501 and DukeMTMC-reID search their pattern in the whole path, so a folder named like
``0001_c7`` lends its numbers to every file in it, and a stray file (``IMG_1234.jpg``) fails with an AttributeError
or a bare assertion. Here a name that does not parse is named in a :class:`DataError`, or left out with a warning
when the user asked for that (``data.skip_bad_images``).
"""
from __future__ import annotations

import glob
import os
import re
import warnings
from typing import List, NamedTuple, Optional, Tuple

from .. import _torchreid
from .checks import DataError

NAME = re.compile(r"([-\d]+)_c(\d)")
"""torchreid's pattern, matched at the start of the file name."""


class NameRules(NamedTuple):
    """What a dataset's names may hold: cameras 1..``cameras``, pids in ``pids`` (inclusive; None: any), and the
    ``junk`` pids torchreid leaves out."""

    example: str
    cameras: int
    pids: Optional[Tuple[int, int]]
    junk: Tuple[int, ...]


RULES = {
    "Market1501": NameRules("0002_c1s1_000451_03.jpg", 6, (0, 1501), (-1,)),
    "DukeMTMCreID": NameRules("0001_c2_f0046182.jpg", 8, None, ()),
}
"""torchreid's own checks of each dataset, by class name."""


class MarketStyleNames:
    """``process_dir`` for a torchreid dataset class whose :data:`RULES` are ``_name_rules``: the same items, labels
    and order as torchreid's, with each file's numbers read from its own name. ``_dataset_name`` names the dataset
    in messages and ``_skip_bad_names`` leaves unparsable files out (with a warning) instead of stopping."""

    _name_rules: NameRules
    _dataset_name: str = ""
    _skip_bad_names: bool = False

    def _parse(self, path: str) -> Optional[Tuple[int, int]]:
        match = NAME.match(os.path.basename(path))
        if match is None:
            return None
        pid, camid = map(int, match.groups())
        rules = self._name_rules
        if pid in rules.junk:
            return pid, camid
        if not 1 <= camid <= rules.cameras or (rules.pids and not rules.pids[0] <= pid <= rules.pids[1]):
            return None
        return pid, camid

    def process_dir(self, dir_path: str, relabel: bool = False) -> List[Tuple[str, int, int]]:
        """``(path, pid, camid)`` of every ``*.jpg`` in ``dir_path`` (camid from 0; pids 0..N-1 with ``relabel``)."""
        parsed, bad = [], []
        for path in glob.glob(os.path.join(glob.escape(dir_path), "*.jpg")):
            numbers = self._parse(path)
            if numbers is None:
                bad.append(path)
            else:
                parsed.append((path, *numbers))
        if bad:
            rules, shown = self._name_rules, sorted(bad)[:5]
            what = (f"dataset {self._dataset_name}: {len(bad)} file names in {dir_path} do not hold an identity and a "
                    f"camera (<pid>_c<1-{rules.cameras}>..., e.g. {rules.example}): {shown}")
            if not self._skip_bad_names:
                raise DataError(f"{what}; rename or remove them, or set data.skip_bad_images True to leave them out")
            warnings.warn(f"{what}; left out (data.skip_bad_images)")
        kept = [(path, pid, camid) for path, pid, camid in parsed if pid not in self._name_rules.junk]
        pids = {pid for _, pid, _ in kept}  # a set built in torchreid's order, so that the labels are the same
        label = {pid: i for i, pid in enumerate(pids)}
        return [(path, label[pid] if relabel else pid, camid - 1) for path, pid, camid in kept]


def name_readers(cls: type) -> Tuple[type, ...]:
    """The mixin to put before ``cls`` in a checked dataset's bases: :class:`MarketStyleNames` with its rules for
    torchreid's Market-1501 and DukeMTMC-reID (and their subclasses), nothing for other datasets."""
    for base in cls.__mro__:
        rules = RULES.get(base.__name__)
        if rules is not None and base.__module__.startswith(_torchreid.data.__name__):
            return (type(f"{base.__name__}Names", (MarketStyleNames,), {"_name_rules": rules}),)
    return ()
