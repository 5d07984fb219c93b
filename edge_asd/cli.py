"""The `edge-asd` command line: calibrate, score, evaluate, check-config, demo, run, status,
tail, learn, replay, pretrain.

Each sub-command is a thin layer over a library module. Usage and configuration errors exit with
code 2 and one message that names the file, key or device; runtime failures exit with 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_asd import __version__
from edge_asd.constants import EXIT_FAILURE, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE, SAMPLE_RATE_HZ

if TYPE_CHECKING:
    import numpy as np

    from edge_asd.config import Config
    from edge_asd.detection.bundle import Bundle
    from edge_asd.model.encoder import Encoder

_LOGGER = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad arguments or configuration: reported in one line, exit code 2."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parse_views_option(text: str) -> str | list[str]:
    """`--views`: auto, or views separated by commas (embedding,transient)."""
    from edge_asd.detection.vocabulary import AUTO_VIEWS, VIEWS

    if text.strip() == AUTO_VIEWS:
        return AUTO_VIEWS
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VIEWS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected {AUTO_VIEWS} or a comma-separated list of {', '.join(VIEWS)}"
        )
    return names


_VIEWS_HELP = (
    "what each window is scored on: auto (calibration keeps the embedding and the cheap views "
    "that are stable on held-out normal audio) or a comma-separated list, e.g. embedding "
    "(the embedding alone) or embedding,transient; default: the config's calibration.views"
)


# ---------------------------------------------------------------- shared loading helpers


def _load_config(path: Path | None) -> Config:
    from edge_asd.config import Config, ConfigError, load_config

    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _open_encoder(model: str | None, window_seconds: float | None = None) -> Encoder:
    from edge_asd.model.contract import ModelError
    from edge_asd.model.encoder import Encoder
    from edge_asd.model.registry import resolve_model

    try:
        path = resolve_model(model)
        expected = None if window_seconds is None else round(window_seconds * SAMPLE_RATE_HZ)
        return Encoder(path, expected_window_samples=expected)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def _samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE_HZ)


# ---------------------------------------------------------------- calibrate


AUDIO_SUFFIXES = (".wav", ".flac")
"""What `calibrate --from-dir` picks up; `audio.files` reads both through libsndfile."""


def _wav_files(directory: Path, flag: str = "--from-dir") -> list[Path]:
    if not directory.is_dir():
        raise UsageError(f"{flag} {directory}: not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UsageError(f"{flag} {directory}: no .wav or .flac files found")
    return files


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import msgspec

    from edge_asd.audio.files import AudioFileError, read_wav
    from edge_asd.detection.bundle import save_bundle
    from edge_asd.detection.calibration import CalibrationError, Clip, Framing, calibrate

    config = _load_config(args.config)
    machine = None
    if config.machines:
        from edge_asd.config import ConfigError

        try:
            machine = config.machine(args.machine)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    window_seconds = machine.window_seconds if machine else args.window_seconds
    hop_seconds = machine.hop_seconds if machine else args.hop_seconds
    encoder = _open_encoder(args.model or config.model, window_seconds)
    clips: list[Clip] = []
    if args.from_dir is not None:
        for path in _wav_files(args.from_dir):
            try:
                clips.append(Clip(name=str(path), samples=read_wav(path)))
            except AudioFileError as exc:
                raise UsageError(str(exc)) from None
    else:
        from edge_asd.audio.recording import RecordingError, record

        device = args.device if args.device is not None else (machine.device if machine else None)
        channel = machine.channel if machine else args.channel
        if device is None:
            raise UsageError("--record needs a device: --device NAME or a machine in --config")
        try:
            samples = record(device, channel=channel, seconds=args.record, progress=True)
        except RecordingError as exc:
            raise UsageError(str(exc)) from None
        clips.append(Clip(name=f"recording from {device} channel {channel}", samples=samples))
    off_clips = (
        [
            Clip(name=str(path), samples=_read_audio(path))
            for path in _audio_files([args.off_from_dir], "--off-from-dir")
        ]
        if args.off_from_dir is not None
        else []
    )
    try:
        framing = Framing.from_seconds(window_seconds, hop_seconds)
        calibration = config.calibration
        if args.views is not None:
            # Already checked by parse_views_option; replace() keeps the section's other values.
            calibration = msgspec.structs.replace(calibration, views=args.views)
        bundle = calibrate(clips, encoder, framing, calibration, off_clips=off_clips, progress=True)
    except CalibrationError as exc:
        print(f"edge-asd calibrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    save_bundle(bundle, args.out)
    stats = bundle.normal_stats
    print(
        f"calibrated {len(bundle.embeddings)} windows from {len(clips)} clip(s) with "
        f"{encoder.info.name} {encoder.info.version}; threshold {bundle.threshold:.4f} "
        f"({bundle.threshold_method}, p={bundle.threshold_percentile}); "
        f"held-out normal scores median {stats.get('median', float('nan')):.4f}; "
        f"bundle {bundle.bundle_id} written to {args.out}"
    )
    _print_report(bundle.report)
    return EXIT_OK


def _print_report(report: dict[str, Any] | None) -> None:
    """The calibration report's decision and warnings, in plain words."""
    if not report:
        return
    decision = report["decision"]
    low, high = decision["expected_false_alarms_per_week_interval"]
    print(
        f"false-alarm budget {decision['target_false_alarms_per_week']:g} per week: expected "
        f"{decision['expected_false_alarms_per_week']:.2g} (90 % interval {low:.2g}-{high:.2g}) "
        f"from {60 * decision['heldout_hours']:.1f} min of held-out normal audio"
    )
    delays = ", ".join(
        f"{k[1:]}x normal: {'not caught' if v is None else f'{v:.1f} s'}"
        for k, v in decision["expected_delay_seconds"].items()
    )
    print(f"expected time to alarm for a fault scoring {delays}")
    views = report.get("views")
    if views:
        print(f"scored on: {views['scored_on']} (views {views['requested']})")
        for view in views["views"]:
            used = f"used, weight {view['weight']:.2f}" if view["used"] else "not used"
            print(f"  {view['name']}: {used}: {view['reason']}")
    for warning in report.get("warnings", []):
        print(f"WARNING: {warning}")
    print("full report: report.json in the bundle")


def _audio_files(paths: Sequence[Path], flag: str) -> list[Path]:
    """Files given directly, and the audio files (.wav, .flac) under directories given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(_wav_files(path, flag))
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{flag} {path}: no such file or directory")
    return files


def _read_audio(path: Path) -> np.ndarray:
    from edge_asd.audio.files import AudioFileError, read_wav

    try:
        return read_wav(path)
    except AudioFileError as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------- learn and replay


def _bundle_and_encoder(path: Path, model: str | None) -> tuple[Bundle, Encoder]:
    """A bundle and its encoder: `model`, else the file the bundle was calibrated with when it
    is still there, else the default; the bundle is checked against it (UsageError)."""
    from edge_asd.detection.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise UsageError(str(exc)) from None
    if model is None and Path(bundle.model.path).is_file():
        model = bundle.model.path
    encoder = _open_encoder(model, bundle.window_samples / SAMPLE_RATE_HZ)
    try:
        return load_bundle(path, model=encoder.info), encoder
    except BundleError as exc:
        raise UsageError(str(exc)) from None


def _cmd_learn(args: argparse.Namespace) -> int:
    from edge_asd.detection.bundle import save_bundle
    from edge_asd.detection.calibration import Clip
    from edge_asd.detection.learn import LearnError, learn

    bundle, encoder = _bundle_and_encoder(args.bundle, args.model)
    clips = [
        Clip(name=str(path), samples=_read_audio(path))
        for path in _audio_files(args.inputs, "learn")
    ]
    try:
        learned, summary = learn(bundle, clips, encoder, force=args.force, progress=True)
    except LearnError as exc:
        raise UsageError(f"{args.bundle}: {exc}") from None
    save_bundle(learned, args.bundle)
    print(
        f"learned {summary.windows_added} windows from {len(clips)} recording(s) into "
        f"{args.bundle} ({summary.windows_before} -> {learned.size} windows; "
        f"{100 * summary.novel_fraction:.0f} % of them scored above the old threshold); "
        f"bundle {learned.bundle_id}; send SIGHUP to the daemon (systemctl reload edge-asd) "
        "to use it"
    )
    _print_report(learned.report)
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from edge_asd.offline.replay import replay
    from edge_asd.service.startup import StartupError, machine_setup, open_encoder

    config = _load_config(args.config)
    from edge_asd.config import ConfigError

    try:
        machine = config.machine(args.machine)
        encoder = open_encoder(config)
        setup = machine_setup(config.machines.index(machine), machine, encoder, config.source)
    except (ConfigError, StartupError) as exc:
        raise UsageError(str(exc)) from None
    failures = replay(setup, encoder, args.files)
    return EXIT_FAILURE if failures else EXIT_OK


# ---------------------------------------------------------------- score


def _cmd_score(args: argparse.Namespace) -> int:
    from edge_asd.audio.files import AudioFileError, read_wav
    from edge_asd.detection.scoring import ClipScorer

    bundle, encoder = _bundle_and_encoder(args.bundle, args.model)
    scorer = ClipScorer.from_bundle(bundle, encoder, aggregate=args.aggregate)
    failures = 0
    window_seconds = bundle.window_samples / SAMPLE_RATE_HZ
    for path in args.files:
        try:
            samples = read_wav(path)
            result = scorer.score_clip(samples)
        except (AudioFileError, ValueError) as exc:
            failures += 1
            print(json.dumps({"file": str(path), "error": str(exc)}), flush=True)
            continue
        warning = None
        if len(samples) < bundle.window_samples:
            # The pipeline pads a short clip with silence to one window: the score then
            # measures the padding as much as the machine. Say so instead of hiding it.
            warning = (
                f"clip is {len(samples) / SAMPLE_RATE_HZ:.2f} s, shorter than one "
                f"{window_seconds:g} s window: scored on one window padded with silence; "
                "the score is not comparable to the threshold"
            )
        line = {
            "file": str(path),
            "score": float(result.clip_score),
            "aggregate": args.aggregate,
            "threshold": float(bundle.threshold),
            "anomalous": bool(result.clip_score > bundle.threshold),
            "window_scores": [round(float(s), 6) for s in result.window_scores],
            "warning": warning,
        }
        print(json.dumps(line), flush=True)
    return EXIT_FAILURE if failures else EXIT_OK


# ---------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from edge_asd.offline.evaluation import EvaluationError, evaluate, format_table

    encoder = _open_encoder(args.model, args.window_seconds)
    try:
        results = evaluate(
            args.root,
            args.out,
            encoder,
            method=args.scoring,
            k=args.k,
            rho_scope=args.rho_scope,
            window_samples=_samples(args.window_seconds),
            hop_samples=_samples(args.hop_seconds),
            aggregate=args.aggregate,
            decision=args.decision,
            views=args.views,
            progress=True,
        )
    except EvaluationError as exc:
        raise UsageError(str(exc)) from None
    print(format_table(results))
    print(f"results written to {args.out / 'results.json'}")
    return EXIT_OK


# ---------------------------------------------------------------- check-config


def _cmd_check_config(args: argparse.Namespace) -> int:
    from edge_asd.config import ConfigError, load_config
    from edge_asd.service.startup import Problem, inspect_setup

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        items = exc.items or [("(file)", str(exc))]
        problems = [Problem(key, message) for key, message in items]
        return _report_check(args, problems, [])
    report = inspect_setup(config, check_devices=args.devices, connect=args.connect)
    return _report_check(args, report.problems, report.lines)


def _report_check(args: argparse.Namespace, problems: Sequence[Any], lines: Sequence[str]) -> int:
    """check-config's verdict: every problem at once, as text (stderr) or one JSON object."""
    errors = [p for p in problems if p.severity == "error"]
    if args.json:
        print(
            json.dumps(
                {
                    "config": str(args.config),
                    "ok": not errors,
                    "problems": [p.as_dict() for p in problems],
                    "summary": list(lines),
                },
                indent=2,
            )
        )
    else:
        for problem in problems:
            print(f"{args.config}: {problem.severity}: {problem}", file=sys.stderr)
        if not errors:
            print(f"{args.config}: OK")
            for line in lines:
                print(f"  {line}")
    if not errors:
        return EXIT_OK
    # As `run` would exit: only problems that may go away by themselves are worth a retry.
    return EXIT_TEMPFAIL if all(p.transient for p in errors) else EXIT_USAGE


# ---------------------------------------------------------------- demo and run


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_asd.offline.demo import run_demo

    return run_demo(model=args.model, out=args.out)


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_asd.config import ConfigError, load_config
    from edge_asd.service.daemon import run_daemon
    from edge_asd.service.startup import StartupError, is_transient

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-asd run: {exc}", file=sys.stderr)
        # An I/O error reading the file may go away (systemd retries); a bad file does not.
        return EXIT_TEMPFAIL if is_transient(exc) else EXIT_USAGE
    try:
        return run_daemon(config, log_level=args.log_level)
    except StartupError as exc:
        for problem in exc.problems:
            print(f"edge-asd run: {problem}", file=sys.stderr)
        if exc.transient:
            print(
                f"edge-asd run: this may go away by itself; exit code {EXIT_TEMPFAIL} "
                "(systemd retries)",
                file=sys.stderr,
            )
        return exc.exit_code


# ---------------------------------------------------------------- status and tail


def _watch_target(args: argparse.Namespace) -> tuple[Config, str, str | None]:
    from edge_asd.config import ConfigError

    config = _load_config(args.config)
    try:
        password = config.mqtt.resolve_password()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return config, args.node or config.node_id, password


def _cmd_status(args: argparse.Namespace) -> int:
    from edge_asd.mqtt.messages import Availability
    from edge_asd.mqtt.watch import WatchError, collect_status, format_status, utc_or_local

    config, node, password = _watch_target(args)
    try:
        snapshot = collect_status(config.mqtt, node, password=password, wait_seconds=args.wait)
    except WatchError as exc:
        print(f"edge-asd status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for line in format_status(snapshot, tz=utc_or_local(args.utc)):
        print(line)
    return EXIT_OK if snapshot.availability == Availability.ONLINE else EXIT_FAILURE


def _cmd_tail(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge_asd.mqtt.watch import WatchError, tail, utc_or_local

    config, node, password = _watch_target(args)
    stop = threading.Event()
    # SIGTERM ends it like Ctrl-C: a clean disconnect, exit 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    try:
        tail(
            config.mqtt,
            node,
            sys.stdout,
            password=password,
            count=args.count,
            tz=utc_or_local(args.utc),
            stop=stop,
        )
    except WatchError as exc:
        print(f"edge-asd tail: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person leaves a live view
    return EXIT_OK


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    # The choices and defaults come from their owners. None of these imports loads numpy:
    # `run` limits the BLAS threads after parsing, which only works before numpy loads.
    from edge_asd.config import CalibrationConfig
    from edge_asd.constants import DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS
    from edge_asd.detection.methods import DEFAULT_SCORE_METHOD, SCORE_METHODS
    from edge_asd.detection.vocabulary import (
        AGGREGATES,
        DECISION_RULES,
        DEFAULT_AGGREGATE,
        DEFAULT_DECISION_RULE,
        RHO_SCOPES,
    )

    parser = argparse.ArgumentParser(
        prog="edge-asd",
        description="Anomalous sound detection for machines: calibrate on normal sound, "
        "then get MQTT alerts when a machine starts to sound wrong.",
    )
    parser.add_argument("--version", action="version", version=f"edge-asd {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cal = sub.add_parser(
        "calibrate",
        help="learn what normal sounds like (one time, on normal running)",
        description="Embed normal audio, build the memory bank and set the alarm threshold from "
        "held-out normal windows. Writes a calibration bundle directory.",
    )
    cal.add_argument("--config", type=Path, help="YAML config (window, hop, scoring, machine)")
    cal.add_argument("--machine", help="machine name in --config (default: the only one)")
    source = cal.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-dir", type=Path, help="directory of WAV or FLAC files of normal running"
    )
    source.add_argument(
        "--record", type=_positive_float, metavar="SECONDS", help="record from the microphone"
    )
    cal.add_argument("--device", help="PortAudio device for --record (default: the machine's)")
    cal.add_argument("--channel", type=int, default=0, help="input channel for --record")
    cal.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    cal.add_argument(
        "--off-from-dir",
        type=Path,
        metavar="DIR",
        help="recordings of the machine stopped (the room without it), to tell stops from "
        "faults where the room is about as loud as the machine",
    )
    cal.add_argument("--model", help="encoder ONNX path or bundled name (default: config's)")
    cal.add_argument("--window-seconds", type=_positive_float, default=DEFAULT_WINDOW_SECONDS)
    cal.add_argument("--hop-seconds", type=_positive_float, default=DEFAULT_HOP_SECONDS)
    cal.add_argument("--views", type=parse_views_option, default=None, help=_VIEWS_HELP)
    cal.set_defaults(handler=_cmd_calibrate)

    score = sub.add_parser(
        "score",
        help="score WAV files against a calibration bundle",
        description="Print one JSON line per file: clip score, threshold and window scores, "
        'and a "warning" (null when none), e.g. for a clip shorter than one window, which is '
        "scored padded with silence. An unreadable file gives an error line; the others are "
        "still scored.",
    )
    score.add_argument("--bundle", type=Path, required=True)
    score.add_argument("--aggregate", choices=AGGREGATES, default=DEFAULT_AGGREGATE)
    score.add_argument("--model", help="encoder (default: the one the bundle was made with)")
    score.add_argument("files", type=Path, nargs="+", metavar="FILE")
    score.set_defaults(handler=_cmd_score)

    ev = sub.add_parser(
        "evaluate",
        help="DCASE Task 2 evaluation on a dataset in the DCASE 2023 layout",
        description="Calibrate on each section's train clips, score its test clips, print a "
        "table and write results.json plus DCASE-style anomaly score CSVs.",
    )
    ev.add_argument("root", type=Path, metavar="ROOT")
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("--model", help="encoder ONNX path or bundled name")
    ev.add_argument("--scoring", choices=SCORE_METHODS, default=DEFAULT_SCORE_METHOD)
    ev.add_argument(
        "--k", type=_positive_int, default=CalibrationConfig().k, help="neighbours for rho_K"
    )
    ev.add_argument(
        "--rho-scope",
        choices=RHO_SCOPES,
        default=None,
        help="bank entries kept out of rho_K: none (all), the same clip's overlapping windows "
        "(non_overlapping) or the whole clip (other_groups); default: calibration's",
    )
    ev.add_argument("--aggregate", choices=AGGREGATES, default=DEFAULT_AGGREGATE)
    ev.add_argument(
        "--decision",
        choices=DECISION_RULES,
        default=DEFAULT_DECISION_RULE,
        help="alarm rule of the operating point (the daemon's default: evidence)",
    )
    ev.add_argument("--window-seconds", type=_positive_float, default=DEFAULT_WINDOW_SECONDS)
    ev.add_argument("--hop-seconds", type=_positive_float, default=DEFAULT_HOP_SECONDS)
    ev.add_argument(
        "--views",
        type=parse_views_option,
        default=CalibrationConfig().views,
        help=_VIEWS_HELP.replace("the config's calibration.views", "calibrate's"),
    )
    ev.set_defaults(handler=_cmd_evaluate)

    chk = sub.add_parser(
        "check-config",
        help="validate a config file, its model and bundles",
        description="Run every check `run` does before it starts, and more: the YAML config, "
        "the model and every machine's bundle (thresholds included), the password, TLS files "
        "(loaded into an SSL context), the broker host name, the outbox (opens, integrity, "
        "writable), `wav:` recordings (decode). Reports every problem at once, each naming its "
        "key. Exit code 0 (warnings allowed), 2 (errors), 75 (only errors that may go away, "
        "such as a full disk).",
    )
    chk.add_argument("--config", type=Path, required=True)
    chk.add_argument(
        "--devices",
        action="store_true",
        help="also check each audio device exists in PortAudio with the configured channel",
    )
    chk.add_argument(
        "--connect", action="store_true", help="also connect to the MQTT broker (then leave)"
    )
    chk.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    chk.set_defaults(handler=_cmd_check_config)

    demo = sub.add_parser(
        "demo",
        help="calibrate on bundled normal audio and score a bundled faulty recording",
        description="Runs the detection core end to end on audio shipped with the package.",
    )
    demo.add_argument("--model", help="encoder ONNX path or bundled name")
    demo.add_argument("--out", type=Path, help="keep the demo's calibration bundle here")
    demo.set_defaults(handler=_cmd_demo)

    run = sub.add_parser(
        "run",
        help="run the detection daemon",
        description="Listen to the configured machines and publish state, events and stats "
        "over MQTT until SIGTERM or SIGINT.",
    )
    run.add_argument("--config", type=Path, required=True)
    run.set_defaults(handler=_cmd_run)

    lrn = sub.add_parser(
        "learn",
        help="add recordings of normal running to a calibration bundle",
        description="Add recordings of normal running that the calibration did not hear to a "
        "bundle: the bank, threshold, evidence decision and report are updated from the "
        "embeddings and the bundle is rewritten atomically. Refuses recordings made for "
        "another model, and audio far from the bank (possibly a fault) unless --force.",
    )
    lrn.add_argument("--bundle", type=Path, required=True)
    lrn.add_argument("--model", help="encoder (default: the one the bundle was made with)")
    lrn.add_argument("--force", action="store_true", help="learn even audio far from the bank")
    lrn.add_argument("inputs", type=Path, nargs="+", metavar="FILE|DIR")
    lrn.set_defaults(handler=_cmd_learn)

    rep = sub.add_parser(
        "replay",
        help="run the daemon's pipeline for one machine over recordings",
        description="Run one machine's exact daemon pipeline (bundle, model, decision rule, stop "
        "detection) over each file as a separate stream from offset 0, as fast as the CPU "
        "allows. Prints one JSON object per line for every state change and event transition; "
        "an unreadable file gives an error line and the others still run.",
    )
    rep.add_argument("--config", type=Path, required=True)
    rep.add_argument("--machine", help="machine name in --config (default: the only one)")
    rep.add_argument("files", type=Path, nargs="+", metavar="FILE")
    rep.set_defaults(handler=_cmd_replay)

    stat = sub.add_parser(
        "status",
        help="show a node's state as the broker has it, once",
        description="Read what the broker retains for the node (availability, machine states, "
        "mutes, detection switches, the latest stats), print a summary and exit: 0 when the "
        "node is online, 1 when it is stopped, away or unknown.",
    )
    stat.add_argument("--config", type=Path, required=True, help="the daemon's config (broker)")
    stat.add_argument("--node", help="node id (default: the config's node_id)")
    stat.add_argument(
        "--wait",
        type=_positive_float,
        default=3.0,
        metavar="SECONDS",
        help="longest wait for the retained messages",
    )
    stat.add_argument("--utc", action="store_true", help="times in UTC (default: local time)")
    stat.set_defaults(handler=_cmd_status)

    tl = sub.add_parser(
        "tail",
        help="follow a node's states and events live",
        description="Print one readable line per machine state change, event start and end "
        "(with why it fired and the clip) and command answer, until Ctrl-C.",
    )
    tl.add_argument("--config", type=Path, required=True, help="the daemon's config (broker)")
    tl.add_argument("--node", help="node id (default: the config's node_id)")
    tl.add_argument("--count", type=_positive_int, metavar="N", help="exit after N lines")
    tl.add_argument("--utc", action="store_true", help="times in UTC (default: local time)")
    tl.set_defaults(handler=_cmd_tail)

    _register_pretrain(sub)
    return parser


PRETRAIN_HELP = "pretrain the embedding encoder (needs the train extra)"


def _register_pretrain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Only a placeholder that takes everything after `pretrain`: `main` hands it to
    # edge_asd.pretrain.cli, which parses it. So the runtime never imports edge_asd.pretrain
    # (nor, through it, torch) unless the command is `pretrain`, and `edge-asd --help` still
    # lists it. prefix_chars="\0": no argument after `pretrain` is an option of this parser,
    # so `edge-asd pretrain --help` reaches the pretrain parser's own help.
    pretrain = sub.add_parser("pretrain", help=PRETRAIN_HELP, add_help=False, prefix_chars="\0")
    pretrain.add_argument("pretrain_args", nargs=argparse.REMAINDER)
    pretrain.set_defaults(handler=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    try:
        from edge_asd.pretrain.cli import main as pretrain_main
    except ImportError as exc:
        raise UsageError(f"the pretrain module cannot be loaded: {exc}") from None
    return pretrain_main(args.pretrain_args, log_level=args.log_level)


# The daemon's budget is one core's few percent: BLAS thread pools (which also spin after each
# product) cost more than they save on one-window matrix products. Set before numpy loads.
_SINGLE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        # SIGHUP (systemctl reload) terminates a process by default; while the model and
        # bundles load, before the daemon's reload handler is installed, ignore it.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for name in _SINGLE_THREAD_ENV:
            os.environ.setdefault(name, "1")
    if args.command != "run":  # the daemon configures journald-friendly logging itself
        logging.basicConfig(
            level=args.log_level or logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    handler: Handler = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"edge-asd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"edge-asd {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
