"""Query features against a gallery feature folder: the k nearest gallery items of each query, computed gallery
chunk by gallery chunk from the memory-mapped features (a gallery larger than memory works), or after query
expansion and k-reciprocal re-ranking (:mod:`.postprocess`; these hold the features in memory); the ranking
metrics when every item has a pid and camera; results as CSV and JSON, and ranked pictures in the style of
torchreid's ``visualize_ranked_results``."""
from __future__ import annotations

import csv
import io
import json
import mmap
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import _torchreid
from ..checkpoint import CheckpointError, write_atomically
from ..config import ConfigError
from ..datasets import DataError
from ..datasets.checks import BadImageError, read_image
from ..evaluation import RankMetrics, evaluate_rows
from . import store
from .neighbours import smallest
from .postprocess import PostProcess


@dataclass
class FeatureSet:
    """Features (a memory map or an array), the absolute path of each row's image (or a name), labels, and
    the SHA-256 of the checkpoint that made them ('' when unknown)."""

    features: np.ndarray
    paths: List[str]
    labels: List[store.Labels]
    checkpoint_sha256: str = ""

    @property
    def labelled(self) -> bool:
        return all(pid is not None and camid is not None for pid, camid in self.labels)


def load_feature_set(location: str) -> FeatureSet:
    """A folder written by ``tools/extract.py`` (complete), or a bare ``.npy`` file of N x D features."""
    if os.path.isfile(location) and location.endswith(".npy"):
        features = np.load(location, mmap_mode="r")
        if features.ndim != 2:
            raise DataError(f"{location} holds an array of shape {features.shape}, not N x D features")
        names = [f"{os.path.basename(location)}[{i}]" for i in range(len(features))]
        return FeatureSet(features, names, [(None, None)] * len(features))
    manifest = store.load_manifest(location)
    if manifest is None:
        raise DataError(f"{location} is not a feature folder written by tools/extract.py ({store.MANIFEST} is missing)")
    if not manifest.complete:
        raise DataError(f"the extraction into {location} stopped after {manifest.done} of {manifest.count} images: "
                        "run the same tools/extract.py command again to finish it")
    paths, labels = store.load_index(location)
    features = np.load(os.path.join(location, store.FEATURES), mmap_mode="r")
    if len(features) != len(paths):
        raise DataError(f"{location}: {store.FEATURES} has {len(features)} rows but {store.INDEX} lists {len(paths)}")
    return FeatureSet(features, [os.path.join(manifest.images, p) for p in paths], labels, manifest.checkpoint_sha256)


def in_memory(features: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(features, dtype=np.float32)).to(device)  # a copy: the map is read-only


class ChunkedDistances:
    """Distances of query features to memory-mapped gallery features (torchreid's squared Euclidean or cosine,
    after optional L2 normalisation), read and converted to float32 ``chunk`` rows at a time."""

    def __init__(self, gallery: np.ndarray, metric: str, normalize: bool, device: torch.device,
                 memory_mb: float = 256) -> None:
        self.gallery, self.metric, self.normalize, self.device = gallery, metric, normalize, device
        self.chunk = max(1, int(memory_mb * 2**20 // (4 * max(1, gallery.shape[1]) * 2)))
        self.squared = torch.cat([self._rows(s).pow(2).sum(dim=1) for s in self._slices()]) if metric == "euclidean" \
            else None

    def _slices(self):
        for start in range(0, len(self.gallery), self.chunk):
            yield slice(start, min(start + self.chunk, len(self.gallery)))

    def _rows(self, rows: slice) -> torch.Tensor:
        block = in_memory(self.gallery[rows], self.device)
        self._release(rows)
        return F.normalize(block, dim=1) if self.normalize or self.metric == "cosine" else block

    def _release(self, rows: slice) -> None:
        """Let go of a memory-mapped chunk's pages once copied (they stay in the OS's file cache), so that the
        process's resident memory stays at a chunk however large the gallery file."""
        mapped = getattr(self.gallery, "_mmap", None)
        if mapped is None or not hasattr(mapped, "madvise"):
            return
        base = self.gallery.offset % mmap.ALLOCATIONGRANULARITY  # where np.memmap's mapping puts row 0
        start = (base + rows.start * self.gallery.strides[0]) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = min(len(mapped), base + rows.stop * self.gallery.strides[0])
        if stop > start:
            mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def _prepare(self, queries: torch.Tensor) -> torch.Tensor:
        queries = queries.float().to(self.device)
        return F.normalize(queries, dim=1) if self.normalize or self.metric == "cosine" else queries

    def blocks(self, queries: torch.Tensor):
        """``(start, distances)`` of ``queries`` to each gallery chunk."""
        queries = self._prepare(queries)
        for rows in self._slices():
            block = self._rows(rows)
            if self.metric == "cosine":
                yield rows.start, torch.mm(queries, block.t()).neg_().add_(1)
            else:
                dist = queries.pow(2).sum(dim=1, keepdim=True) + self.squared[rows]
                yield rows.start, dist.addmm_(queries, block.t(), beta=1, alpha=-2)

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        return torch.cat([block for _, block in self.blocks(queries)], dim=1)


def top_k(distances: Callable[[int, int], torch.Tensor], num_q: int, k: int,
          query_chunk: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` smallest distances and their gallery indices, ties by index."""
    values, indices = [], []
    for start in range(0, num_q, query_chunk):
        v, i = smallest(distances(start, min(start + query_chunk, num_q)), k)
        values.append(v.cpu())
        indices.append(i.cpu())
    return torch.cat(values), torch.cat(indices)


def streamed_top_k(chunked: ChunkedDistances, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``top_k`` of ``queries`` against the whole gallery, merging gallery chunk by chunk: only one chunk of the
    gallery and of the distances is in memory at a time."""
    best_v = torch.empty(len(queries), 0, device=chunked.device)
    best_i = torch.empty(len(queries), 0, dtype=torch.int64, device=chunked.device)
    for start, block in chunked.blocks(queries):
        v, i = smallest(block, min(k, block.shape[1]))
        merged_v, order = torch.sort(torch.cat([best_v, v], dim=1), dim=1, stable=True)  # earlier chunks first
        best_v = merged_v[:, :k]
        best_i = torch.cat([best_i, i + start], dim=1).gather(1, order)[:, :k]
    return best_v.cpu(), best_i.cpu()


@dataclass
class SearchResult:
    distances: torch.Tensor
    indices: torch.Tensor
    metrics: Optional[RankMetrics]


def search(query: FeatureSet, gallery: FeatureSet, k: int, metric: str = "euclidean", normalize: bool = False,
           rerank: bool = False, aqe: bool = False, postprocess: PostProcess = PostProcess(),
           device: torch.device = torch.device("cpu"), max_rank: int = 50) -> SearchResult:
    """The ``k`` nearest gallery items of every query; with labels on both sides, torchreid's ranking metrics
    through the fast evaluator."""
    if query.features.shape[1] != gallery.features.shape[1]:
        raise DataError(f"query features have {query.features.shape[1]} dimensions, the gallery's "
                        f"{gallery.features.shape[1]}: they come from different models")
    k = min(k, len(gallery.features))
    memory_mb = postprocess.memory_mb
    qf = in_memory(query.features, device)
    query_chunk = max(1, int(memory_mb * 2**20 // (4 * 4 * max(1, len(gallery.features)))))
    if rerank or aqe:
        gf = in_memory(gallery.features, device)
        if normalize:
            qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
        if aqe:
            qf, gf = PostProcess(True, postprocess.expansion_k, postprocess.expansion_alpha,
                                 memory_mb=memory_mb).expand(qf, gf)
        if rerank:
            reranked = postprocess.rerank(qf, gf, metric)
            rows: Callable[[int, int], torch.Tensor] = lambda a, b: torch.from_numpy(reranked.rows(a, b))  # noqa: E731
        else:
            plain = ChunkedDistances(gf.cpu().numpy(), metric, False, device, memory_mb)
            rows = lambda a, b: plain(qf[a:b])  # noqa: E731
        values, indices = top_k(rows, len(qf), k, query_chunk)
    else:
        chunked = ChunkedDistances(gallery.features, metric, normalize, device, memory_mb)
        parts = [streamed_top_k(chunked, qf[s:s + query_chunk], k) for s in range(0, len(qf), query_chunk)]
        values, indices = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        rows = lambda a, b: chunked(qf[a:b])  # noqa: E731
    metrics = None
    if query.labelled and gallery.labelled:
        q_pids, q_cams = (np.array([lab[j] for lab in query.labels]) for j in (0, 1))
        g_pids, g_cams = (np.array([lab[j] for lab in gallery.labels]) for j in (0, 1))
        metrics = evaluate_rows(lambda a, b: rows(a, b).cpu(), len(qf), len(gallery.features), q_pids, g_pids, q_cams,
                                g_cams, max_rank=min(max_rank, len(gallery.features)), memory_mb=memory_mb)
    return SearchResult(values, indices, metrics)


def write_results(output: str, query: FeatureSet, gallery: FeatureSet, result: SearchResult,
                  options: Dict[str, object]) -> Tuple[str, str]:
    """``output/results.csv`` (query, rank, gallery, distance) and ``output/results.json``, written atomically."""
    os.makedirs(output, exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["query", "rank", "gallery", "distance"])
    entries = []
    for q, (dists, idx) in enumerate(zip(result.distances.tolist(), result.indices.tolist())):
        ranked = []
        for r, (d, g) in enumerate(zip(dists, idx), 1):
            writer.writerow([query.paths[q], r, gallery.paths[g], f"{d:.6g}"])
            pid, camid = gallery.labels[g]
            ranked.append({"rank": r, "gallery": gallery.paths[g], "distance": d, "pid": pid, "camid": camid})
        pid, camid = query.labels[q]
        entries.append({"query": query.paths[q], "pid": pid, "camid": camid, "results": ranked})
    report: Dict[str, object] = {"options": options, "queries": entries}
    if result.metrics is not None:
        m = result.metrics
        report["metrics"] = {"mAP": m.mAP, "mINP": m.mINP, "cmc": m.cmc.tolist(), "num_valid": m.num_valid,
                             "num_skipped": m.num_skipped}
    csv_path, json_path = os.path.join(output, "results.csv"), os.path.join(output, "results.json")
    write_atomically(csv_path, lambda f: f.write(table.getvalue().encode()))
    write_atomically(json_path, lambda f: f.write((json.dumps(report, indent=1) + "\n").encode()))
    return csv_path, json_path


GREY = (160, 160, 160)


def _tile(path: str, width: int, height: int, colour: Tuple[int, int, int], border: int) -> np.ndarray:
    """An image resized to ``width`` x ``height`` with a coloured border (BGR), as torchreid draws its ranks; a
    grey tile crossed out where the file cannot be read."""
    try:
        image = cv2.cvtColor(np.asarray(read_image(path)), cv2.COLOR_RGB2BGR)
    except BadImageError:
        image = np.full((height, width, 3), 255, np.uint8)
        cv2.line(image, (0, 0), (width - 1, height - 1), GREY, 2)
    image = cv2.resize(image, (width, height))
    image = cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_CONSTANT, value=colour)
    return cv2.resize(image, (width, height))


def draw_ranks(output: str, query: FeatureSet, gallery: FeatureSet, result: SearchResult, width: int = 128,
               height: int = 256) -> List[str]:
    """One PNG per query in ``output/ranked``: the query, then its ranked gallery images left to right, framed green
    (same pid) or red (another) where both pids are known, grey where not; torchreid's spacing and colours."""
    tools = _torchreid.submodule("utils.reidtools")
    spacing, extra, border = tools.GRID_SPACING, tools.QUERY_EXTRA_SPACING, tools.BW
    folder = os.path.join(output, "ranked")
    os.makedirs(folder, exist_ok=True)
    written = []
    for q, idx in enumerate(result.indices.tolist()):
        columns = len(idx) + 1
        grid = np.full((height, columns * width + len(idx) * spacing + extra, 3), 255, np.uint8)
        grid[:, :width] = _tile(query.paths[q], width, height, (0, 0, 0), border)
        q_pid = query.labels[q][0]
        for r, g in enumerate(idx, 1):
            g_pid = gallery.labels[g][0]
            colour = GREY if q_pid is None or g_pid is None else tools.GREEN if g_pid == q_pid else tools.RED
            start = r * width + r * spacing + extra
            grid[:, start:start + width] = _tile(gallery.paths[g], width, height, colour, border)
        stem = os.path.splitext(os.path.basename(query.paths[q]))[0]
        path = os.path.join(folder, f"{q:05d}_{stem}.png")
        ok, encoded = cv2.imencode(".png", grid)
        write_atomically(path, lambda f, data=encoded: f.write(data.tobytes()))
        written.append(path)
    return written


def resolve_query(cfg, location: str, weights: str, output: str, device: str) -> FeatureSet:
    """The query features: a feature folder or ``.npy`` file as they are; an image or a folder of images extracted
    with ``weights`` into ``output/query_features`` (resumable like any extraction)."""
    from .extract import extract

    if location.endswith(".npy") or os.path.isfile(os.path.join(location, store.MANIFEST)):
        return load_feature_set(location)
    if not weights:
        raise ConfigError(f"--query {location} holds images: give --weights, the checkpoint the gallery features "
                          "were extracted with")
    folder = os.path.join(output, "query_features")
    extract(cfg, weights, location, folder, device=device, progress=False)
    return load_feature_set(folder)


def run(cfg, gallery_folder: str, query_location: str, weights: str, k: int, output: str, rerank: bool = False,
        aqe: bool = False, device: str = "auto", pictures: bool = True) -> SearchResult:
    """What ``tools/search.py`` does: search, print the metrics where labels allow, write the results."""
    from .extract import _device

    gallery = load_feature_set(gallery_folder)
    if weights and gallery.checkpoint_sha256 and store.file_sha256(weights) != gallery.checkpoint_sha256:
        raise CheckpointError(f"{weights} is not the checkpoint the features in {gallery_folder} were extracted with "
                              f"(SHA-256 {gallery.checkpoint_sha256[:12]}): their distances would mean nothing")
    query = resolve_query(cfg, query_location, weights, output, device)
    if query.checkpoint_sha256 and gallery.checkpoint_sha256 and query.checkpoint_sha256 != gallery.checkpoint_sha256:
        raise CheckpointError(f"the query features {query_location} and the gallery's {gallery_folder} come from "
                              "different checkpoints: extract both with the same --weights")
    if k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {k}")
    result = search(query, gallery, k, cfg.test.dist_metric, cfg.test.normalize_feature, rerank, aqe,
                    PostProcess.from_config(cfg), _device(device, cfg), max(cfg.test.ranks))
    options = {"top_k": k, "rerank": rerank, "aqe": aqe, "dist_metric": cfg.test.dist_metric,
               "normalize_feature": cfg.test.normalize_feature, "gallery": os.path.abspath(gallery_folder),
               "query": os.path.abspath(query_location)}
    csv_path, json_path = write_results(output, query, gallery, result, options)
    drawn = draw_ranks(output, query, gallery, result, cfg.data.width, cfg.data.height) if pictures else []
    print(f"{len(query.paths)} queries against {len(gallery.paths)} gallery images: top {result.indices.shape[1]} "
          f"written to {csv_path} and {json_path}" + (f", ranked pictures to {os.path.dirname(drawn[0])}" if drawn else ""))
    if result.metrics is not None:
        m = result.metrics
        print("** Results **")
        print(f"mAP: {m.mAP:.1%}")
        print(f"mINP: {m.mINP:.1%}")
        print("CMC curve")
        for r in cfg.test.ranks:
            if r <= len(m.cmc):
                print(f"Rank-{r:<3}: {m.cmc[r - 1]:.1%}")
        if m.num_skipped:
            print(f"{m.num_skipped} queries without a match in another camera were skipped")
    return result
