r"""Speed and memory of SCAL against the like-for-like baseline (its backbone's ``_bnneck``) and torchreid's resnet50.

    python tools/benchmark.py --device cpu --batch-size 16 --num-instances 4 --height 256 --width 128 \
        --steps 5 [--models NAME ...] [--amp] [--channels-last] [--json bench.json]

``--models`` takes any name in torchreid's model table (default: resnet50 and the resnet50 SCAL family), e.g.
``osnet_x1_0_bnneck osnet_x1_0_scal osnet_x1_0_scal_spatial``. In one process and on one batch: the
training-step time of each model in its engine (torchreid's ``ImageTripletEngine`` for models without attention,
``ImageSCALEngine`` with the config's default ``scal.*`` settings for the SCAL variants) and the eval-mode
feature-extraction throughput, after warm-up steps, as median and spread over ``--steps``; the models take turns
in every repetition, so that a drift in the machine's speed affects them alike. Each SCAL model's ratios are
taken against its own backbone's ``_bnneck`` when that is in the run.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the process's peak RSS, which is a
process-wide high-water mark, so each model's is measured in a fresh child process doing the same steps.

``--eval market1501|msmt17`` benchmarks evaluation (ranking) instead: see tools/benchmark_eval.py.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Callable, Dict, List, Sequence

import torch
import torchvision

import torchreid_scal
from torchreid_scal import _torchreid
from torchreid_scal.ablation import VARIANTS
from torchreid_scal.cli import at_least
from torchreid_scal.config import MAX_IMAGE_SIDE, get_default_config
from torchreid_scal.engine import ImageTripletEngine
from torchreid_scal.models import DEFAULT_CFGS, MODEL_FACTORIES, attention_of, create_model
from torchreid_scal.scal_engine import ImageSCALEngine

import benchmark_eval  # tools/benchmark_eval.py, beside this script

MODELS = ("resnet50", "resnet50_bnneck", "resnet50_scal_channel", "resnet50_scal_spatial")
TORCHREID_REFERENCE = "resnet50"


def baseline_of(name: str) -> str:
    """The like-for-like baseline of ``name``: its backbone's ``_bnneck`` (itself for one), or '' for a model
    that is not this package's."""
    backbone = DEFAULT_CFGS.get(name, {}).get("backbone")
    return f"{backbone}_bnneck" if backbone else ""


def scal_options(variant: str = "") -> Dict[str, object]:
    """The critic settings SCAL trains with: a config's defaults, or with the ``scal.*`` keys of an ablation
    ``variant`` (e.g. ``scal_oracle``)."""
    cfg = get_default_config()
    pairs = VARIANTS[variant] if variant else []
    cfg.merge_from_list([item for key, value in zip(pairs[::2], pairs[1::2]) if key.startswith("scal.")
                         for item in (key, value)])
    scal = cfg.scal
    return dict(critic_weight=scal.critic_weight, critic_optim=scal.critic_optim, critic_lr=scal.critic_lr,
                critic_form=scal.critic_form, critic_stages=list(scal.critic_stages),
                critic_activation=scal.critic_activation, critic_explore_std=scal.critic_explore_std,
                critic_target=scal.critic_target)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=at_least(1), default=16)
    parser.add_argument("--num-instances", type=at_least(1), default=4)
    parser.add_argument("--height", type=at_least(1, MAX_IMAGE_SIDE), default=256)
    parser.add_argument("--width", type=at_least(1, MAX_IMAGE_SIDE), default=128)
    parser.add_argument("--steps", type=at_least(1), default=5, help="measured repetitions (after --warmup)")
    parser.add_argument("--warmup", type=at_least(0), default=2)
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (bf16 on CPU and Ampere or later GPUs, else fp16 with loss scaling)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--openvino", action="store_true",
                        help="also time extraction by each model exported to OpenVINO IR (CPU; needs openvino)")
    parser.add_argument("--json", default="", help="write the figures to this file")
    names = sorted(_torchreid.model_factory())
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=names, metavar="NAME",
                        help="any model of torchreid's table, e.g. osnet_x1_0_bnneck osnet_x1_0_scal")
    parser.add_argument("--profile", choices=names, metavar="NAME",
                        help="print torch.profiler's table of one training step and exit")
    parser.add_argument("--scal-variant", default="", choices=["", *(v for v in VARIANTS if v.startswith("scal_"))],
                        help="time the SCAL models with this ablation variant's scal.* settings (e.g. scal_oracle) "
                             "instead of the config's defaults")
    parser.add_argument("--memory-of", choices=names, help=argparse.SUPPRESS)
    parser.add_argument("--eval", choices=sorted(benchmark_eval.SIZES),
                        help="benchmark evaluation (ranking) instead, at this test set's size; "
                             "see tools/benchmark_eval.py for its options")
    args = parser.parse_args(argv)
    if args.batch_size % args.num_instances:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --num-instances {args.num_instances}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def make_batch(args) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pids = torch.arange(args.batch_size // args.num_instances).repeat_interleave(args.num_instances)
    return {"img": torch.randn(args.batch_size, 3, args.height, args.width, generator=generator), "pid": pids}


def build_engine(name: str, args, num_classes: int):
    """The model on its device, its optimizer, and the engine it trains in."""
    device = torch.device(args.device)
    if name in MODEL_FACTORIES:
        model = create_model(name, num_classes, loss="triplet", pretrained=False, height=args.height, width=args.width)
    else:
        model = _torchreid.models.build_model(name, num_classes, loss="triplet", pretrained=False)
    model = model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    optimizer = _torchreid.optim.build_optimizer(model, optim="adam", lr=3.5e-4)
    datamanager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=num_classes, sources=["bench"])
    common = dict(use_gpu=device.type == "cuda", amp=args.amp, test_amp=args.amp, channels_last=args.channels_last)
    if attention_of(name):
        return ImageSCALEngine(datamanager, model, optimizer, **scal_options(args.scal_variant), **common)
    return ImageTripletEngine(datamanager, model, optimizer, **common)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(jobs: Dict[str, Callable[[], None]], steps: int, warmup: int, device: str) -> Dict[str, List[float]]:
    """Seconds per call of each job, the jobs taking turns in every repetition so that a drift in the
    machine's speed affects all of them alike."""
    times: Dict[str, List[float]] = {name: [] for name in jobs}
    for rep in range(warmup + steps):
        for name, job in jobs.items():
            _sync(device)
            start = time.perf_counter()
            job()
            _sync(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def measure(names: Sequence[str], args, data) -> Dict[str, Dict[str, object]]:
    """Training-step and extraction times of every model, interleaved; CUDA peak memory per model."""
    engines = {name: build_engine(name, args, num_classes=int(data["pid"].max()) + 1) for name in names}
    imgs = data["img"].to(args.device)

    def train_step(engine):
        engine.set_model_mode("train")
        return lambda: engine.forward_backward(data)

    def extract(engine):
        return lambda: engine.extract_features(imgs)

    result: Dict[str, Dict[str, object]] = {name: {} for name in names}
    if args.device == "cuda":
        for name, engine in engines.items():
            torch.cuda.reset_peak_memory_stats()
            interleaved({name: train_step(engine)}, 1, 1, args.device)
            result[name]["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for name, times in interleaved({n: train_step(e) for n, e in engines.items()}, args.steps, args.warmup,
                                   args.device).items():
        result[name]["train_step_s"] = times
    for engine in engines.values():
        engine.set_model_mode("eval")
    jobs = {n: extract(e) for n, e in engines.items()}
    if args.openvino:
        jobs.update({f"{n}/openvino": openvino_extract(e.network, data["img"]) for n, e in engines.items()})
    for name, times in interleaved(jobs, args.steps, args.warmup, args.device).items():
        model, _, kind = name.partition("/")
        result[model]["openvino_extract_s" if kind else "extract_s"] = times
    return result


def openvino_extract(model, images: torch.Tensor) -> Callable[[], None]:
    """Extraction by ``model`` exported to OpenVINO IR and compiled for the CPU, on ``images``."""
    import copy
    import tempfile

    from torchreid_scal.export import export, openvino_model

    with tempfile.TemporaryDirectory() as folder:
        cpu_model = copy.deepcopy(model).cpu().eval()
        compiled = openvino_model(export(cpu_model, images[:2], folder, ["openvino"])["openvino"])
    array = images.numpy()
    return lambda: compiled(array)


def profile_step(name: str, args, data) -> None:
    """Where one training step of ``name`` spends its time, by operator (after warm-up steps); for a SCAL model,
    also where its step spends more than its backbone's ``_bnneck``, profiled in the same run: the operators
    ordered by the self time they add."""
    names = [name] + [baseline_of(name)] * (baseline_of(name) not in ("", name))
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    self_s: Dict[str, Dict[str, float]] = {}
    for model in names:
        engine = build_engine(model, args, num_classes=int(data["pid"].max()) + 1)
        engine.set_model_mode("train")
        for _ in range(args.warmup):
            engine.forward_backward(data)
        _sync(args.device)
        with torch.profiler.profile(activities=activities) as prof:
            engine.forward_backward(data)
            _sync(args.device)
        events = prof.key_averages()
        self_s[model] = {e.key: getattr(e, sort) / 1e6 for e in events}
        if model == name:
            print(events.table(sort_by=sort, row_limit=20))
    if len(names) == 1:
        return
    ref = names[1]
    total = {m: sum(times.values()) for m, times in self_s.items()}
    print(f"{name}: {total[name]:.3f} s of operator self time, {ref}: {total[ref]:.3f} s "
          f"({total[name] / total[ref]:.3f}x); the operators that add the most:")
    added = {op: self_s[name].get(op, 0.0) - self_s[ref].get(op, 0.0) for op in self_s[name].keys() | self_s[ref]}
    print(f"{'operator':<48}{name[:21]:>22}{ref[:21]:>22}{'added s':>10}{'of extra':>10}")
    for op in sorted(added, key=added.get, reverse=True)[:15]:
        print(f"{op[:47]:<48}{self_s[name].get(op, 0.0):>22.3f}{self_s[ref].get(op, 0.0):>22.3f}"
              f"{added[op]:>10.3f}{added[op] / (total[name] - total[ref]):>10.1%}")


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM, which (unlike ru_maxrss) a child does not inherit from the
    process that started it; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_rss_mb(name: str, args) -> float:
    """Peak RSS of a fresh process that runs this model's training and extraction steps."""
    argv = ["--device", args.device, "--batch-size", str(args.batch_size), "--num-instances", str(args.num_instances),
            "--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--scal-variant", args.scal_variant, "--memory-of", name]
    argv += ["--amp"] * args.amp + ["--channels-last"] * args.channels_last
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def ratios(figures: Dict[str, Dict[str, float]], name: str, reference: str) -> Dict[str, float]:
    """``name``'s step time, extraction time per image and peak memory as multiples of ``reference``'s."""
    step, ips, mem = figures["train_step_s"], figures["extract_images_per_s"], figures["peak_mem_mb"]
    return {"train_step": step[name] / step[reference], "extract_time_per_image": ips[reference] / ips[name],
            "peak_mem": mem[name] / mem[reference]}


def spread(values: List[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--eval" or a.startswith("--eval=") for a in argv):
        benchmark_eval.main(argv)
        return
    args = parse_args(argv)
    torch.manual_seed(0)
    data = make_batch(args)
    if args.memory_of:
        measure([args.memory_of], args, data)
        print(peak_rss_mb())
        return
    if args.profile:
        profile_step(args.profile, args, data)
        return
    raw = measure(args.models, args, data)
    if args.device == "cpu":
        for name in args.models:
            raw[name]["peak_mem_mb"] = child_peak_rss_mb(name, args)
    figures = {
        "train_step_s": {n: statistics.median(r["train_step_s"]) for n, r in raw.items()},
        "extract_images_per_s": {n: args.batch_size / statistics.median(r["extract_s"]) for n, r in raw.items()},
        "peak_mem_mb": {n: r["peak_mem_mb"] for n, r in raw.items()},
    }
    if args.openvino:
        figures["openvino_extract_images_per_s"] = {n: args.batch_size / statistics.median(r["openvino_extract_s"])
                                                    for n, r in raw.items()}
    report = dict(figures, raw=raw, settings=vars(args), scal=scal_options(args.scal_variant), versions={
        "torch": torch.__version__, "torchvision": torchvision.__version__, "torchreid": _torchreid.VERSION,
        "torchreid_layout": _torchreid.LAYOUT, "torchreid_scal": torchreid_scal.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
    })
    report["vs_bnneck"] = {n: ratios(figures, n, baseline_of(n)) for n in raw if baseline_of(n) in raw}
    if TORCHREID_REFERENCE in raw:
        report["vs_resnet50"] = {n: ratios(figures, n, TORCHREID_REFERENCE) for n in raw}
    ids = args.batch_size // args.num_instances
    print(f"device {args.device}, batch {args.batch_size} ({ids}x{args.num_instances}), "
          f"{args.height}x{args.width}, amp {args.amp}, channels_last {args.channels_last}, "
          f"{args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} threads")
    settings = f"the {args.scal_variant} variant's settings" if args.scal_variant else "the config defaults"
    print(f"SCAL engine with {settings}: " + ", ".join(f"{k} {v}" for k, v in report["scal"].items()))
    columns = ("train_step", "extract_time_per_image", "peak_mem")
    header = f"{'model':<30}{'step s (median, range)':>26}{'img/s':>9}{'peak MB':>9}"
    header += "".join(f"{c + '/bnneck':>20}" for c in ("step", "time/img", "mem"))
    if TORCHREID_REFERENCE in raw:
        header += "".join(f"{c + '/' + TORCHREID_REFERENCE:>22}" for c in ("step", "time/img", "mem"))
    print(header + "\n(bnneck: each model's own <backbone>_bnneck, where the run has it)")
    for name in raw:
        step, ips, mem = (figures[k][name] for k in ("train_step_s", "extract_images_per_s", "peak_mem_mb"))
        line = f"{name:<30}{step:>9.3f} ({spread(raw[name]['train_step_s']):>13}){ips:>9.1f}{mem:>9.0f}"
        own = report["vs_bnneck"].get(name)
        line += "".join(f"{own[c]:>20.3f}" if own else f"{'-':>20}" for c in columns)
        if TORCHREID_REFERENCE in raw:
            line += "".join(f"{report['vs_resnet50'][name][c]:>22.3f}" for c in columns)
        print(line)
    if args.openvino:
        print("extraction on the CPU, images/s: " + ", ".join(
            f"{n} eager {figures['extract_images_per_s'][n]:.1f} / OpenVINO "
            f"{figures['openvino_extract_images_per_s'][n]:.1f}" for n in raw))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
