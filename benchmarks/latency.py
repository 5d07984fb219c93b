"""Per-window latency of the encoder, of memory-bank scoring and of the feature views, and
peak RSS of a scorer.

    python benchmarks/latency.py                    # default model, banks of 1k/10k/50k
    python benchmarks/latency.py --model student.onnx --markdown
    python benchmarks/latency.py --views-only --bank-sizes 1000 10000   # the views alone

Everything runs single-threaded (onnxruntime 1 intra-op thread, BLAS 1 thread unless the
OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS variables say otherwise),
as the daemon does on a 2-core gateway. Figures go to docs/benchmarks.md, section "Latency".
Tests never assert on speed; this script is where speed is measured.
"""

# ruff: noqa: E402  (the BLAS thread variables must be set before numpy is imported)
from __future__ import annotations

import os

# BLAS reads its thread count once, when numpy loads, so this must come before the imports below.
# One thread, as on the gateway; set OPENBLAS_NUM_THREADS (etc.) yourself to measure more.
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
for _var in _BLAS_THREAD_VARS:
    os.environ.setdefault(_var, "1")

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Final

import numpy as np
import onnxruntime as ort

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.fusion import FeatureBank, FeatureScaler, ViewNorm, ViewSet
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.pipeline import MachinePipeline
from edge_asd.detection.views import compute_views
from edge_asd.detection.vocabulary import EMBEDDING_VIEW, FEATURE_VIEWS
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model

DEFAULT_ITERATIONS: Final = 500
WARMUP_ITERATIONS: Final = 20
DEFAULT_BANK_SIZES: Final = (1_000, 10_000, 50_000)
WHOLE_WINDOW_BANK_SIZE: Final = 10_000
RSS_BANK_SIZES: Final = (10_000, 50_000)
RSS_WINDOWS: Final = 200
SCORE_METHOD: Final = "density"
MS_PER_NS: Final = 1e-6
PERCENTILES: Final = (50, 95)
KIB_PER_MIB: Final = 1024
NOISE_AMPLITUDE: Final = 0.1
RHO_RANGE: Final = (0.01, 0.1)
"""Stand-in local densities: scoring cost does not depend on their values, and computing the
real ones for a 50k bank (O(N^2)) would dominate the run."""
SEED: Final = 0


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: wall clock, and CPU time of the process (all its threads)."""

    label: str
    p50_ms: float
    p95_ms: float
    cpu_p50_ms: float
    cpu_p95_ms: float


def time_call(label: str, call: Callable[[], object], iterations: int) -> Timing:
    """Wall and CPU p50/p95 of `call` after a warm-up.

    On a shared machine a call that is preempted waits out another process's time slice, which
    inflates wall time but not CPU time; a large gap between the two means a busy machine.
    """
    for _ in range(WARMUP_ITERATIONS):
        call()
    wall = np.empty(iterations, dtype=np.float64)
    cpu = np.empty(iterations, dtype=np.float64)
    for i in range(iterations):
        wall_start, cpu_start = time.perf_counter_ns(), time.process_time_ns()
        call()
        cpu[i] = (time.process_time_ns() - cpu_start) * MS_PER_NS
        wall[i] = (time.perf_counter_ns() - wall_start) * MS_PER_NS
    p50, p95 = np.percentile(wall, PERCENTILES)
    cpu_p50, cpu_p95 = np.percentile(cpu, PERCENTILES)
    return Timing(label, float(p50), float(p95), float(cpu_p50), float(cpu_p95))


def _frontend_session(window_samples: int, threads: int) -> ort.InferenceSession | None:
    """The log-mel front end alone (needs onnx to build); None without onnx."""
    try:
        from onnx import TensorProto, helper

        from edge_asd_dev import logmel_model
    except ImportError:
        return None
    nodes, initializers = logmel_model.frontend_nodes("waveform", "logmel")
    graph = helper.make_graph(
        nodes,
        "frontend_only",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, [1, window_samples])],
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", logmel_model.OPSET)],
        ir_version=logmel_model.IR_VERSION,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _random_bank(size: int, dim: int, rng: np.random.Generator) -> MemoryBank:
    # float32 from the start, like a bank loaded from a calibration bundle (no float64 copy).
    embeddings = rng.standard_normal((size, dim), dtype=np.float32)
    rho = rng.uniform(*RHO_RANGE, size).astype(np.float32)
    return MemoryBank(embeddings, k=1, rho=rho)


def _pipeline(encoder: Encoder, bank: MemoryBank) -> MachinePipeline:
    """The daemon's pipeline for one machine (no detector: only scoring is timed)."""
    return MachinePipeline(
        encoder,
        bank,
        method=SCORE_METHOD,
        window_samples=encoder.window_samples,
        hop_samples=encoder.window_samples,
    )


def encoder_timings(model: str | None, iterations: int, threads: int) -> list[Timing]:
    encoder = Encoder(resolve_model(model), intra_op_threads=threads)
    rng = np.random.default_rng(SEED)
    window = (NOISE_AMPLITUDE * rng.standard_normal(encoder.window_samples)).astype(np.float32)
    name = encoder.info.name
    timings = []
    frontend = _frontend_session(encoder.window_samples, threads)
    if frontend is not None:
        feed = {"waveform": window[np.newaxis]}
        timings.append(
            time_call(
                f"log-mel front end only ({encoder.window_samples} samples)",
                lambda: frontend.run(None, feed),
                iterations,
            )
        )
    timings.append(
        time_call(
            f"encoder {name} (front end + embedding)", lambda: encoder.embed(window), iterations
        )
    )
    return timings


def scoring_timings(model: str | None, bank_sizes: Sequence[int], iterations: int) -> list[Timing]:
    """The pipeline's scoring stage alone, on one embedding of `model`'s size."""
    encoder = Encoder(resolve_model(model))
    rng = np.random.default_rng(SEED)
    query = rng.standard_normal((1, encoder.embedding_dim)).astype(np.float32)
    timings = []
    for size in bank_sizes:
        pipeline = _pipeline(encoder, _random_bank(size, encoder.embedding_dim, rng))
        timings.append(
            time_call(
                f"score 1 window vs {size:,}-entry bank ({SCORE_METHOD})",
                partial(pipeline.score_embeddings, query),
                iterations,
            )
        )
    return timings


def whole_window_timings(model: str | None, iterations: int, threads: int) -> list[Timing]:
    """Embed then score, as the daemon's pipeline does per window; each stage timed, and the sum.

    Scoring here runs right after the encoder has been through the caches, so it is slower
    than the back-to-back scoring rows: this is the figure that the daemon sees.
    """
    encoder = Encoder(resolve_model(model), intra_op_threads=threads)
    rng = np.random.default_rng(SEED)
    pipeline = _pipeline(encoder, _random_bank(WHOLE_WINDOW_BANK_SIZE, encoder.embedding_dim, rng))
    window = (NOISE_AMPLITUDE * rng.standard_normal((1, encoder.window_samples))).astype(np.float32)
    stages: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
        (f"  of which: encoder {encoder.info.name}", encoder.embed),
        (
            f"  of which: score vs {WHOLE_WINDOW_BANK_SIZE:,}-entry bank",
            pipeline.score_embeddings,
        ),
    ]
    for _ in range(WARMUP_ITERATIONS):
        pipeline.score_windows(window)
    wall = np.zeros((len(stages) + 1, iterations))
    cpu = np.zeros((len(stages) + 1, iterations))
    for i in range(iterations):
        data = window
        for j, (_, stage) in enumerate(stages, start=1):
            wall_start, cpu_start = time.perf_counter_ns(), time.process_time_ns()
            data = stage(data)
            cpu[j, i] = (time.process_time_ns() - cpu_start) * MS_PER_NS
            wall[j, i] = (time.perf_counter_ns() - wall_start) * MS_PER_NS
    wall[0], cpu[0] = wall[1:].sum(axis=0), cpu[1:].sum(axis=0)
    labels = [f"whole window: {encoder.info.name} + score", *(label for label, _ in stages)]
    timings = []
    for label, wall_row, cpu_row in zip(labels, wall, cpu, strict=True):
        p50, p95 = np.percentile(wall_row, PERCENTILES)
        cpu_p50, cpu_p95 = np.percentile(cpu_row, PERCENTILES)
        timings.append(Timing(label, float(p50), float(p95), float(cpu_p50), float(cpu_p95)))
    return timings


def _proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MiB; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / KIB_PER_MIB
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    # getrusage's ru_maxrss survives fork + exec, so a child started from a big parent reports
    # the parent's size; VmHWM belongs to the child's own address space.
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB  # KiB on Linux


def rss_child(model: str | None, bank_size: int) -> dict[str, float]:
    """Run as a separate process: load the encoder and a bank, score windows, report RSS."""
    encoder = Encoder(resolve_model(model))
    rng = np.random.default_rng(SEED)
    pipeline = _pipeline(encoder, _random_bank(bank_size, encoder.embedding_dim, rng))
    window = (NOISE_AMPLITUDE * rng.standard_normal(encoder.window_samples)).astype(np.float32)
    for _ in range(RSS_WINDOWS):
        pipeline.score_windows(window[np.newaxis])
    return {
        "bank_size": bank_size,
        "peak_rss_mib": _peak_rss_mib(),
        "end_rss_mib": _proc_status_mib("VmRSS") or float("nan"),
    }


def measure_rss(model: str | None, bank_size: int) -> dict[str, float]:
    """RSS figures of a fresh process that scores RSS_WINDOWS windows."""
    command = [sys.executable, __file__, "--rss-child", str(bank_size)]
    if model is not None:
        command += ["--model", model]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"onnxruntime {ort.__version__}"
    )


def _print_table(
    title: str, rows: Sequence[tuple[str, ...]], header: tuple[str, ...], markdown: bool
) -> None:
    if markdown:
        print(f"\n{title}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


VIEW_BANK_SIZES: Final = (1_000, 10_000)


def _view_set(window: np.ndarray, size: int, rng: np.random.Generator) -> ViewSet:
    """Every feature view with a `size`-entry bank of stand-in features (jittered copies of the
    window's own: the cost does not depend on their values)."""
    features = compute_views(window, FEATURE_VIEWS)
    banks = {}
    for name, f in features.items():
        bank = f + rng.standard_normal((size, f.shape[1])).astype(np.float32)
        banks[name] = FeatureBank(
            bank, rng.uniform(*RHO_RANGE, size).astype(np.float32), FeatureScaler.fit(bank)
        )
    norm = ViewNorm(centre=0.0, spread=1.0, weight=1.0)
    norms = {name: norm for name in (EMBEDDING_VIEW, *FEATURE_VIEWS)}
    return ViewSet(norms, banks, k=1, method=SCORE_METHOD)


def view_timings(bank_sizes: Sequence[int], iterations: int) -> list[Timing]:
    """Each view's features alone, all of them together (one shared STFT), and all of them
    with their banks scored and fused: what views add to every window."""
    rng = np.random.default_rng(SEED)
    window = (NOISE_AMPLITUDE * rng.standard_normal((1, SAMPLE_RATE_HZ))).astype(np.float32)
    timings = [
        time_call(f"view {name}: features", partial(compute_views, window, [name]), iterations)
        for name in FEATURE_VIEWS
    ]
    timings.append(
        time_call(
            f"all {len(FEATURE_VIEWS)} views: features",
            partial(compute_views, window, FEATURE_VIEWS),
            iterations,
        )
    )
    embedding_score = np.ones(1, dtype=np.float32)
    for size in bank_sizes:
        views = _view_set(window, size, rng)
        timings.append(
            time_call(
                f"all views: features + score vs {size:,}-entry banks + fuse",
                partial(views.score, window, embedding_score),
                iterations,
            )
        )
    return timings


def _timing_rows(timings: list[Timing]) -> list[tuple[str, ...]]:
    return [
        (
            t.label,
            f"{t.p50_ms:.3f}",
            f"{t.p95_ms:.3f}",
            f"{t.cpu_p50_ms:.3f}",
            f"{t.cpu_p95_ms:.3f}",
        )
        for t in timings
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        help="model path or bundled name (repeatable; default: the default model)",
    )
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--bank-sizes", type=int, nargs="+", default=list(DEFAULT_BANK_SIZES))
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")
    parser.add_argument(
        "--views-only",
        action="store_true",
        help="time the feature views alone (per view, all, and with banks of --bank-sizes)",
    )
    parser.add_argument("--rss-child", type=int, metavar="BANK_SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models: list[str | None] = list(args.model) if args.model else [None]

    if args.rss_child is not None:
        print(json.dumps(rss_child(models[0], args.rss_child)))
        return 0
    blas = ", ".join(f"{var}={os.environ.get(var)}" for var in _BLAS_THREAD_VARS)
    print(f"machine: {machine_description()}")
    print(
        f"onnxruntime intra-op threads: {args.threads}; {blas}; iterations: {args.iterations} "
        f"(after {WARMUP_ITERATIONS} warm-up); audio at {SAMPLE_RATE_HZ} Hz"
    )
    header = (
        "what (per window, batch 1)",
        "wall p50 ms",
        "wall p95 ms",
        "CPU p50 ms",
        "CPU p95 ms",
    )
    views_table = partial(
        _print_table,
        "Views (1 s window, one thread)",
        _timing_rows(
            view_timings(
                [size for size in args.bank_sizes if size <= max(VIEW_BANK_SIZES)],
                args.iterations,
            )
        ),
        header,
        args.markdown,
    )
    if args.views_only:
        views_table()
        return 0
    encoder_rows: list[Timing] = []
    whole: list[Timing] = []
    model_of_dim: dict[int, str | None] = {}
    for model in models:
        encoder_rows += encoder_timings(model, args.iterations, args.threads)
        whole += whole_window_timings(model, args.iterations, args.threads)
        model_of_dim.setdefault(Encoder(resolve_model(model)).embedding_dim, model)
    _print_table("Encoder", _timing_rows(encoder_rows), header, args.markdown)
    scoring: list[Timing] = []
    for dim, model in sorted(model_of_dim.items()):
        scoring += [
            replace(t, label=f"{t.label}, D={dim}")
            for t in scoring_timings(model, args.bank_sizes, args.iterations)
        ]
    _print_table("Scoring", _timing_rows(scoring), header, args.markdown)
    _print_table("Whole window (embed, then score)", _timing_rows(whole), header, args.markdown)
    views_table()
    if not args.no_rss:
        name = Encoder(resolve_model(models[0])).info.name
        rows = []
        for size in RSS_BANK_SIZES:
            figures = measure_rss(models[0], size)
            rows.append(
                (
                    f"{name} + {size:,}-entry bank, {RSS_WINDOWS} windows",
                    f"{figures['peak_rss_mib']:.0f}",
                    f"{figures['end_rss_mib']:.0f}",
                )
            )
        _print_table(
            "Memory of a scoring process (fresh process; peak = VmHWM, else getrusage ru_maxrss)",
            rows,
            ("process", "peak RSS MiB", "RSS at end MiB"),
            args.markdown,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
