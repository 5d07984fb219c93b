"""Everything `run` resolves and checks before it starts, in one place: the model, each machine's
bundle and detection settings, the MQTT credentials and (optionally) the audio devices.

`edge-asd run`, `edge-asd check-config` and `edge-asd replay` all build their machines here, so a
config that checks out is the one that runs, and a replay runs the daemon's exact pipeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge_asd.config import Config, ConfigError, MachineConfig, detector_settings
from edge_asd.constants import seconds_to_samples
from edge_asd.detection.bundle import Bundle, BundleError, load_bundle
from edge_asd.detection.detector import DetectorSettings
from edge_asd.detection.pipeline import MachinePipeline
from edge_asd.detection.running import RunningSettings
from edge_asd.model.contract import ModelError
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model

_LOGGER = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start: bad model, bundle, outbox or settings. Message names it."""


def open_encoder(config: Config) -> Encoder:
    try:
        return Encoder(resolve_model(config.model))
    except ModelError as exc:
        raise StartupError(f"model: {exc}") from None


def _load_machine_bundle(index: int, machine: MachineConfig, encoder: Encoder) -> Bundle:
    key = f"machines.{index}"
    window = seconds_to_samples(machine.window_seconds)
    if window != encoder.info.window_samples:
        raise StartupError(
            f"{key}.window_seconds: {machine.window_seconds} s = {window} samples, but model "
            f"{encoder.info.name} takes {encoder.info.window_samples}-sample windows"
        )
    try:
        bundle = load_bundle(machine.bundle, model=encoder.info)
    except BundleError as exc:
        raise StartupError(f"{key}.bundle: {exc}") from None
    if bundle.window_samples != window:
        raise StartupError(
            f"{key}.bundle: {machine.bundle} was calibrated with {bundle.window_samples}-sample "
            f"windows but window_seconds is {machine.window_seconds}; recalibrate"
        )
    return bundle


@dataclass(frozen=True)
class MachineSetup:
    """One machine, resolved: its config, bundle and the detection it runs."""

    index: int
    config: MachineConfig
    bundle: Bundle
    detector: DetectorSettings

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    @property
    def decision(self) -> str:
        return "evidence" if self.detector.evidence is not None else "hysteresis"

    def describe(self) -> str:
        machine, bundle = self.config, self.bundle
        if self.detector.evidence is not None:
            ev = self.detector.evidence
            rule = (
                f"evidence (reference {ev.reference:.4f}, alarm level {ev.alarm_level:.2f}, "
                f"gross {ev.gross_score:.4f}"
            )
            if bundle.target_false_alarms_per_week is not None:
                rule += f", budget {bundle.target_false_alarms_per_week:g} false alarms/week"
            rule += ")"
        else:
            rule = f"hysteresis (threshold {self.threshold:.4f}, {machine.trigger_windows} windows)"
        stops = "on" if machine.detect_stops else "off"
        return (
            f"machine {machine.name}: device {machine.device!r} channel {machine.channel}, "
            f"bundle {bundle.bundle_id} ({len(bundle.embeddings)} windows, {bundle.method}), "
            f"{rule}, stop detection {stops}"
        )

    def pipeline(self, encoder: Encoder) -> MachinePipeline:
        """A fresh pipeline for this machine (the daemon's, replay's)."""
        running = (
            RunningSettings(holdoff_seconds=self.config.startup_holdoff_seconds)
            if self.config.detect_stops
            else None
        )
        return MachinePipeline.from_bundle(
            self.bundle,
            encoder,
            hop_samples=seconds_to_samples(self.config.hop_seconds),
            detector=self.detector,
            running=running,
        )


def machine_setup(index: int, machine: MachineConfig, encoder: Encoder) -> MachineSetup:
    bundle = _load_machine_bundle(index, machine, encoder)
    if machine.threshold is not None:
        threshold = machine.threshold
    else:
        threshold = bundle.threshold * machine.threshold_scale
    try:
        detector = detector_settings(machine, threshold, bundle.evidence)
    except ValueError as exc:
        raise StartupError(
            f"machines.{index}.bundle: {machine.bundle}: {exc}; recalibrate"
        ) from None
    if machine.decision == "evidence" and bundle.evidence is None and machine.threshold is None:
        _LOGGER.warning(
            "%s: bundle %s predates the evidence decision; using hysteresis until it is "
            "recalibrated",
            machine.name,
            machine.bundle,
        )
    return MachineSetup(index, machine, bundle, detector)


def machine_setups(config: Config, encoder: Encoder) -> list[MachineSetup]:
    if not config.machines:
        raise StartupError("machines: at least one machine is needed to run")
    return [machine_setup(i, m, encoder) for i, m in enumerate(config.machines)]


def check_setup(config: Config, *, check_devices: bool = False) -> list[str]:
    """Everything `run` checks before starting; returns a summary, raises StartupError."""
    if not config.machines:
        raise StartupError("machines: at least one machine is needed to run")
    encoder = open_encoder(config)
    lines = [
        f"model {encoder.info.name} {encoder.info.version} ({encoder.info.path}, "
        f"{encoder.info.embedding_dim}-d, {encoder.info.window_samples}-sample windows)"
    ]
    lines.extend(setup.describe() for setup in machine_setups(config, encoder))
    try:
        config.mqtt.resolve_password()
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    client_id = config.mqtt.client_id_for(config.node_id)
    lines.append(
        f"mqtt {config.mqtt.host}:{config.mqtt.port} as {client_id}, "
        f"topics {config.mqtt.topic_prefix}/{config.node_id}/..."
    )
    if check_devices:
        lines.extend(_check_devices(config))
    return lines


def _check_devices(config: Config) -> list[str]:
    from edge_asd.audio.capture import open_source
    from edge_asd.audio.sources import AudioDeviceError

    lines = []
    for machine in config.machines:
        try:
            source = open_source(machine.device, (machine.channel,))
            lines.append(f"device {machine.device!r}: {source.description}")
        except AudioDeviceError as exc:
            raise StartupError(f"machines: {exc}") from None
    return lines
