"""The tools' own arguments: a value that cannot work is argparse's usage error (exit 2) naming the option, before
any work; a value that parses is one the tool can use."""
from __future__ import annotations

import ast
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import ablate  # noqa: E402
import attention_report  # noqa: E402
import benchmark  # noqa: E402
import benchmark_eval  # noqa: E402
import complexity  # noqa: E402
import export  # noqa: E402
import visualize_attention  # noqa: E402

REQUIRED = ["--config-file", "c.yaml", "--weights", "w.pth"]


def refused(parse, argv, capsys) -> str:
    """argparse's error line for ``argv``; the test fails unless it exits with status 2."""
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "exported"
    path.write_text("not a folder")
    return str(path)


@pytest.mark.parametrize("parse, argv, message", [
    (export.parse_args, REQUIRED + ["--output", "FILE"], "argument --output: FILE is a file, not a folder"),
    (visualize_attention.parse_args, REQUIRED + ["--output", "FILE"], "argument --output: FILE is a file, not a folder"),
    (attention_report.parse_args, REQUIRED + ["--output", "FILE"], "argument --output: FILE is a file, not a folder"),
    (export.parse_args, REQUIRED + ["--output", "FILE/sub"], "argument --output: cannot write to FILE/sub: FILE is "
                                                             "not a writable folder"),
    (visualize_attention.parse_args, REQUIRED + ["--output", "o", "--num-images", "0"],
     "argument --num-images: must be at least 1, got 0"),
    (visualize_attention.parse_args, REQUIRED + ["--output", "o", "--num-images", "-2"],
     "argument --num-images: must be at least 1, got -2"),
    (visualize_attention.parse_args, REQUIRED + ["--output", "o", "--images", "MISSING"],
     "argument --images: MISSING is missing, not a folder"),
    (attention_report.parse_args, REQUIRED + ["--output", "o", "--bins", "0"], "argument --bins: must be at least 1, "
                                                                               "got 0"),
    (attention_report.parse_args, REQUIRED + ["--output", "o", "--examples", "-1"],
     "argument --examples: must be at least 0, got -1"),
    (attention_report.parse_args, REQUIRED + ["--output", "o", "--events", "MISSING"],
     "argument --events: MISSING is missing, not a folder"),
    (ablate.parse_args, ["--config-file", "c.yaml", "--output", "o", "--backbone", "hacnn"],
     "argument --backbone: invalid choice: 'hacnn'"),
    (benchmark.parse_args, ["--models", "hacnn_scal"], "argument --models: invalid choice: 'hacnn_scal'"),
    (benchmark.parse_args, ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (benchmark.parse_args, ["--num-instances", "0"], "argument --num-instances: must be at least 1, got 0"),
    (benchmark.parse_args, ["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (benchmark.parse_args, ["--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (benchmark.parse_args, ["--height", "100000"], "argument --height: must be at least 1 and at most 1024, "
                                                   "got 100000"),
    (benchmark.parse_args, ["--steps", "two"], "argument --steps: expected an integer, got 'two'"),
    (complexity.parse_args, ["--height", "0"], "argument --height: must be at least 1 and at most 1024, got 0"),
    (complexity.parse_args, ["--num-classes", "0"], "argument --num-classes: must be at least 1, got 0"),
    (benchmark_eval.parse_args, ["--eval", "market1501", "--memory-mb", "0"],
     "argument --memory-mb: must be a finite number above 0, got 0"),
    (benchmark_eval.parse_args, ["--eval", "market1501", "--dim", "0"], "argument --dim: must be at least 1, got 0"),
])
def test_values_that_cannot_work_are_a_usage_error_naming_the_option(parse, argv, message, a_file, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    argv = [arg.replace("FILE", a_file).replace("MISSING", missing) for arg in argv]
    assert message.replace("FILE", a_file).replace("MISSING", missing) in refused(parse, argv, capsys)


def test_usable_values_parse(tmp_path):
    args = visualize_attention.parse_args(REQUIRED + ["--output", str(tmp_path / "new" / "out"), "--num-images", "1",
                                                      "--images", str(tmp_path)])
    assert args.num_images == 1 and args.images == str(tmp_path) and not (tmp_path / "new").exists()
    assert visualize_attention.parse_args(REQUIRED + ["--output", "o"]).images is None
    args = attention_report.parse_args(REQUIRED + ["--output", "o", "--bins", "1", "--examples", "0"])
    assert (args.bins, args.examples, args.events) == (1, 0, None)
    assert ablate.parse_args(["--config-file", "c.yaml", "--output", "o", "--backbone", "osnet_x0_25"]).backbone == \
        "osnet_x0_25"
    assert benchmark.parse_args(["--steps", "1", "--warmup", "0", "--batch-size", "2", "--num-instances", "2"]).steps == 1


def test_the_usage_examples_in_the_tools_help_keep_their_line_breaks():
    """A backslash at a line's end in a plain docstring joins the lines: --help showed one line with gaps."""
    tools = os.path.join(os.path.dirname(__file__), "..", "..", "tools")
    for name in sorted(os.listdir(tools)):
        if name.endswith(".py"):
            doc = ast.get_docstring(ast.parse(open(os.path.join(tools, name)).read())) or ""
            assert not re.search(r"\S {5,}\[", doc), f"{name}: a usage example lost its line breaks"
