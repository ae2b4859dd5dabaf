"""tools/extract.py and tools/search.py end to end on the generated demo images: features that NumPy loads,
an extraction killed (SIGKILL) and resumed to the features of an uninterrupted one, unreadable images skipped,
another checkpoint's folder never overwritten; search results, pictures and metrics, with and without re-ranking
and query expansion; the chunked top-k of a memory-mapped gallery."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchreid_scal.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from torchreid_scal.cli import run_tool
from torchreid_scal.evaluation import evaluate
from torchreid_scal.retrieval import store
from torchreid_scal.retrieval.extract import extract
from torchreid_scal.retrieval.postprocess import PostProcess
from torchreid_scal.retrieval.search import ChunkedDistances, load_feature_set, search, streamed_top_k

REPO = Path(__file__).parents[2]
DEMO = str(REPO / "configs" / "scal_demo.yaml")


@pytest.fixture(scope="module")
def demo(trained_run, tmp_path_factory):
    """The demo checkpoint, its config and a copy of the demo's gallery and query images; the gallery's features
    extracted once, in this process."""
    root = Path(trained_run.cfg.data.root) / "scal_demo"
    images = tmp_path_factory.mktemp("images")
    shutil.copytree(root / "bounding_box_test", images / "gallery")
    shutil.copytree(root / "query", images / "query")
    reference = str(tmp_path_factory.mktemp("reference"))
    extract(trained_run.cfg, trained_run.weights, str(images / "gallery"), reference, device="cpu", progress=False)
    return trained_run, images, reference


def tool(name: str, *args: str) -> list:
    return [sys.executable, str(REPO / "tools" / name), *args]


def test_features_load_with_numpy_and_the_index_names_each_row(demo):
    run, images, reference = demo
    features = np.load(os.path.join(reference, "features.npy"))
    names = sorted(os.listdir(images / "gallery"))
    assert features.shape == (len(names), 2048) and features.dtype == np.float32
    with open(os.path.join(reference, "index.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == names
    pid, cam = int(names[0][:4]), int(names[0].split("_c")[1][0])
    assert (int(rows[0]["pid"]), int(rows[0]["camid"])) == (pid, cam)
    model_input = load_feature_set(reference)
    assert model_input.labelled and model_input.checkpoint_sha256 == store.file_sha256(run.weights)


def test_killed_extraction_resumes_to_the_uninterrupted_features(demo, tmp_path):
    run, images, reference = demo
    out = tmp_path / "gallery"
    command = tool("extract.py", "--weights", run.weights, "--images", str(images / "gallery"), "--output", str(out),
                   "--config-file", DEMO, "--batch-size", "4", "--device", "cpu", "--dtype", "float32", *run.opts)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        manifest = store.load_manifest(str(out)) if (out / store.MANIFEST).exists() else None
        if manifest is not None and manifest.done >= 12:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    stopped = store.load_manifest(str(out))
    assert not stopped.complete and 12 <= stopped.done < stopped.count
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {out} after" in result.stdout
    assert "img/s" in result.stderr  # the progress bar's rate (and its ETA)
    np.testing.assert_allclose(np.load(out / "features.npy"), np.load(os.path.join(reference, "features.npy")),
                               rtol=0, atol=1e-5)
    assert (out / "index.csv").read_text() == (Path(reference) / "index.csv").read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "were extracted already" in again.stdout


def test_unreadable_images_are_listed_and_skipped_in_float16(demo, tmp_path, capsys):
    run, images, reference = demo
    folder = tmp_path / "imgs" / "nested"
    shutil.copytree(images / "gallery", folder)
    names = sorted(os.listdir(folder))
    (folder / names[3]).write_bytes(b"not an image")
    manifest = extract(run.cfg, run.weights, str(tmp_path / "imgs"), str(tmp_path / "out"), device="cpu",
                       dtype="float16", progress=False)
    assert list(manifest.unreadable) == [f"nested/{names[3]}"] and manifest.rows == len(names) - 1
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    features = np.load(tmp_path / "out" / "features.npy", mmap_mode="r")
    expected = np.delete(np.load(os.path.join(reference, "features.npy")), 3, axis=0)
    assert features.dtype == np.float16 and features.shape == expected.shape
    np.testing.assert_allclose(features.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    paths, _ = store.load_index(str(tmp_path / "out"))
    assert paths == [f"nested/{n}" for n in names if n != names[3]]


def test_a_missing_checkpoint_stops_before_anything_is_written(demo, tmp_path, capsys):
    run, images, _ = demo
    status = run_tool(lambda: extract(run.cfg, str(tmp_path / "typo.pth"), str(images / "gallery"),
                                      str(tmp_path / "out"), progress=False))
    assert status == 5 and f"checkpoint not found: {tmp_path / 'typo.pth'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_features_of_another_checkpoint_are_never_overwritten(demo, tmp_path, capsys):
    run, images, reference = demo
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    other = load_checkpoint(run.weights)
    other["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["state_dict"].items()}
    other_weights = save_checkpoint(other, str(tmp_path / "other.pth.tar"))
    before = (out / "features.npy").read_bytes()
    status = run_tool(lambda: extract(run.cfg, other_weights, str(images / "gallery"), str(out), progress=False))
    assert status == 5
    assert "refusing to overwrite them; choose another --output" in capsys.readouterr().err
    assert (out / "features.npy").read_bytes() == before
    with pytest.raises(CheckpointError, match="not the checkpoint the features"):
        from torchreid_scal.retrieval.search import run as search_run
        search_run(run.cfg, str(out), str(images / "query"), other_weights, 5, str(tmp_path / "res"))


def test_search_writes_results_pictures_and_the_fast_evaluators_metrics(demo, tmp_path):
    run, images, reference = demo
    out = tmp_path / "results"
    result = subprocess.run(tool("search.py", "--gallery", reference, "--query", str(images / "query"), "--weights",
                                 run.weights, "--top-k", "5", "--output", str(out), "--config-file", DEMO,
                                 "--device", "cpu", *run.opts), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    queries = sorted(os.listdir(images / "query"))
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * len(queries) and [r["rank"] for r in rows[:5]] == ["1", "2", "3", "4", "5"]
    assert rows[0]["query"] == str(images / "query" / queries[0])
    assert all(float(a["distance"]) <= float(b["distance"]) for a, b in zip(rows[:4], rows[1:5]))
    report = json.loads((out / "results.json").read_text())
    gallery, query = load_feature_set(reference), load_feature_set(str(out / "query_features"))
    labels = [np.array([lab[j] for lab in s.labels]) for s in (query, gallery) for j in (0, 1)]
    expected = evaluate(torch.from_numpy(np.array(query.features)), torch.from_numpy(np.array(gallery.features)),
                        labels[0], labels[2], labels[1], labels[3])
    assert report["metrics"]["mAP"] == pytest.approx(expected.mAP, abs=1e-9)
    assert f"mAP: {expected.mAP:.1%}" in result.stdout and "Rank-1  :" in result.stdout
    pictures = sorted(os.listdir(out / "ranked"))
    assert len(pictures) == len(queries) and pictures[0].endswith(os.path.splitext(queries[0])[0] + ".png")
    assert report["queries"][0]["results"][0]["gallery"] == rows[0]["gallery"]


def test_search_with_rerank_and_query_expansion_uses_the_shared_code(demo, tmp_path):
    run, images, reference = demo
    gallery = load_feature_set(reference)
    query_set = load_feature_set(reference)  # the gallery against itself: every item's best match is itself
    post = PostProcess.from_config(run.cfg)
    result = search(query_set, gallery, 3, rerank=True, aqe=True, postprocess=post)
    gf = torch.from_numpy(np.array(gallery.features))
    qe, ge = PostProcess(True, memory_mb=post.memory_mb).expand(gf, gf)
    reranked = post.rerank(qe, ge, "euclidean").matrix()
    expected = torch.sort(torch.from_numpy(reranked), dim=1, stable=True)
    assert torch.equal(result.indices, expected.indices[:, :3])
    torch.testing.assert_close(result.distances, expected.values[:, :3])
    assert result.metrics is not None and result.metrics.num_valid > 0


def test_streamed_top_k_of_a_memory_map_equals_the_full_sort_with_ties(tmp_path):
    generator = torch.Generator().manual_seed(0)
    gallery = torch.randint(-2, 3, (300, 4), generator=generator).float()  # many exact ties
    path = tmp_path / "g.npy"
    np.save(path, gallery.numpy())
    queries = torch.randint(-2, 3, (7, 4), generator=generator).float()
    chunked = ChunkedDistances(np.load(path, mmap_mode="r"), "euclidean", False, torch.device("cpu"), memory_mb=0.001)
    assert chunked.chunk < 50
    values, indices = streamed_top_k(chunked, queries, 20)
    full = torch.cdist(queries, gallery).square()
    expected = torch.sort(full, dim=1, stable=True)
    assert torch.equal(indices, expected.indices[:, :20])
    torch.testing.assert_close(values, expected.values[:, :20])


def test_truncating_a_features_file_keeps_it_loadable(tmp_path):
    features = store.open_features(str(tmp_path), 1000, 8, "float16")
    values = (np.arange(8000).reshape(1000, 8) % 100).astype(np.float16)
    features[:] = values
    features.flush()
    del features
    store.truncate_features(str(tmp_path), 998)
    loaded = np.load(tmp_path / "features.npy")
    assert loaded.shape == (998, 8) and loaded.dtype == np.float16
    np.testing.assert_array_equal(loaded, values[:998])
    assert os.path.getsize(tmp_path / "features.npy") == 128 + 998 * 8 * 2
