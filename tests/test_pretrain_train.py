"""End to end on generated audio: a tiny ONNX teacher, a tiny compact student trained a few
steps, exported (fp32 + int8), loaded by the core's Encoder, calibrated and scored; resume
gives the same weights as an uninterrupted run; the CLI registers without torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge_asd.audio.files import write_wav  # noqa: E402
from edge_asd.constants import SAMPLE_RATE_HZ  # noqa: E402
from edge_asd.pretrain.data import recipe_from_dict  # noqa: E402
from edge_asd.pretrain.train import (  # noqa: E402
    HISTORY_FILE,
    Trainer,
    load_student,
    train,
)
from edge_asd_dev.synth import apply_fault, machine_sound  # noqa: E402
from tests.test_pretrain_data import make_onnx_teacher  # noqa: E402

CLIP_SECONDS = 3.0
WHINE_LEVEL_DB = 6.0


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Bit-exact comparisons need the same reduction order in every run.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clean/{a,b}/*.wav machine sounds, noise/*.wav, a tiny teacher and a DCASE dev set."""
    root = tmp_path_factory.mktemp("pretrain")
    rng = np.random.default_rng(42)
    for machine, f0 in (("a", 25.0), ("b", 41.0)):
        (root / "clean" / machine).mkdir(parents=True)
        for i in range(3):
            x = machine_sound(CLIP_SECONDS, rng=rng, fundamental_hz=f0)
            write_wav(root / "clean" / machine / f"{i}.wav", x)
    (root / "noise").mkdir()
    write_wav(root / "noise" / "hiss.wav", 0.05 * rng.standard_normal(3 * SAMPLE_RATE_HZ))
    t = np.arange(3 * 22_050) / 22_050
    write_wav(root / "noise" / "hum.wav", 0.2 * np.sin(2 * np.pi * 60 * t), 22_050)
    make_onnx_teacher(root / "teacher.onnx", samples=SAMPLE_RATE_HZ, dim=8, classes=5)
    dev = root / "dev" / "toy"
    (dev / "train").mkdir(parents=True)
    (dev / "test").mkdir()
    for i in range(3):
        x = machine_sound(2.0, rng=rng)
        write_wav(dev / "train" / f"section_00_source_train_normal_{i:04d}_x.wav", x)
    for domain, condition in (("source", 1.0), ("target", 1.2)):
        for i in range(2):
            x = machine_sound(2.0, rng=rng, condition=condition)
            write_wav(dev / "test" / f"section_00_{domain}_test_normal_{i:04d}_x.wav", x)
            y = apply_fault(x, "whine", rng=rng, level_db=WHINE_LEVEL_DB)
            write_wav(dev / "test" / f"section_00_{domain}_test_anomaly_{i:04d}_x.wav", y)
    return root


def tiny_recipe(root: Path, *, devset: str | None = "dev", **optim: object):
    return recipe_from_dict(
        {
            "seed": 7,
            "data": {
                "clean": [{"path": "clean"}],
                "noise": [{"path": "noise", "labels": "stem"}],
                "hop_seconds": 0.5,
                "holdout_fraction": 0.2,
                "label_tags": {"a": [0], "b": [1], "hiss": [2], "hum": [3]},
            },
            "mixing": {"clean_fraction": 0.25, "perturb_variants": 1},
            "teacher": {"kind": "onnx", "path": "teacher.onnx", "cache_dir": "cache"},
            "student": {"kind": "compact", "embedding_dim": 16, "width": 8},
            "objective": {"name": "retain", "alpha": 1.0, "beta": 0.5},
            "optim": {
                "lr": 3e-3,
                "batch_size": 4,
                "epochs": 2,
                "steps_per_epoch": 3,
                **optim,
            },
            "validation": {"devset": devset, "holdout_batches": 1},
        },
        base_dir=root,
    )


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_train_export_calibrate_and_score(workspace: Path, tmp_path: Path) -> None:
    from edge_asd.config import CalibrationConfig
    from edge_asd.detection.calibration import Clip, Framing, calibrate
    from edge_asd.detection.scoring import ClipScorer
    from edge_asd.model.encoder import Encoder
    from edge_asd.pretrain.train import export_checkpoint

    recipe = tiny_recipe(workspace)
    out = tmp_path / "run"
    result = train(recipe, out, progress=False)
    assert result.epochs_done == 2
    assert result.steps_done == 2 * 3
    history = [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]
    assert [h["epoch"] for h in history] == [-1, 0, 1]
    for record in history:
        assert -1.0 <= record["retention_cosine"] <= 1.0
        assert 0.0 <= record["dev_official_score"] <= 1.0
        assert np.isfinite(record["holdout_loss"])
    assert all(np.isfinite(h["train_loss"]) for h in history[1:])
    # Training moved the weights away from the initialisation.
    first = _state(out / "checkpoints" / "epoch_000.pt")["model"]
    last = _state(out / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(first[k], last[k]) for k in first if first[k].is_floating_point())

    report = export_checkpoint(
        out / "checkpoints" / "last.pt",
        tmp_path / "export",
        name="tiny-student",
        version="0.1",
        calibration_windows=8,
    )
    int8_path = Path(report["int8"])
    assert (tmp_path / "export" / "tiny-student-parity.json").is_file()
    assert report["parity"]["cosine_median"] >= 0.99
    # The report also gives the change in dev ASD score and the speed ratio (issue: parity).
    saved = json.loads((tmp_path / "export" / "tiny-student-parity.json").read_text())
    for key in ("dev_official_score_fp32", "dev_official_score_int8"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["dev_score_change"] == pytest.approx(
        saved["dev_official_score_int8"] - saved["dev_official_score_fp32"]
    )
    assert saved["speed_ratio_fp32_over_int8"] == pytest.approx(
        saved["fp32_ms_p50"] / saved["int8_ms_p50"]
    )
    for path in (Path(report["fp32"]), int8_path):
        encoder = Encoder(path, expected_window_samples=SAMPLE_RATE_HZ)  # the contract check
        assert encoder.info.embedding_dim == 16
        assert encoder.info.name == "tiny-student"

    # The int8 export against the torch student on the same windows.
    student, _ = load_student(out / "checkpoints" / "last.pt")
    rng = np.random.default_rng(3)
    windows = np.stack([machine_sound(1.0, rng=rng) for _ in range(4)])
    with torch.no_grad():
        ref = student(torch.from_numpy(windows)).embedding.numpy()
    got = Encoder(Path(report["fp32"])).embed(windows)
    assert np.allclose(got, ref, atol=1e-3, rtol=1e-3)

    # Calibrate and score through the core runtime with the int8 model.
    encoder = Encoder(int8_path)
    clips = [Clip(f"n{i}", machine_sound(8.0, rng=rng)) for i in range(4)]
    settings = CalibrationConfig(min_windows=20, folds=2)
    bundle = calibrate(clips, encoder, Framing.from_seconds(), settings, progress=False)
    assert bundle.model.sha256 == encoder.info.sha256
    assert np.isfinite(bundle.threshold)
    scorer = ClipScorer.from_bundle(bundle, encoder)
    normal = scorer.score_clip(machine_sound(4.0, rng=rng))
    assert normal.n_windows == 7
    assert np.all(np.isfinite(normal.window_scores))


def test_resume_gives_the_same_weights(workspace: Path, tmp_path: Path) -> None:
    # The dev-set score is not needed here; the held-out checks still run every epoch.
    recipe = tiny_recipe(workspace, devset=None, epochs=3, steps_per_epoch=2)
    whole = train(recipe, tmp_path / "whole", progress=False)
    assert whole.epochs_done == 3

    interrupted = train(recipe, tmp_path / "split", progress=False, stop_after_epoch=0)
    assert interrupted.epochs_done == 1
    resumed = train(recipe, tmp_path / "split", progress=False, resume=True)
    assert resumed.epochs_done == 3
    assert resumed.steps_done == whole.steps_done

    a = _state(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = _state(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    # A different seed would have given different weights: the comparison can fail.
    other = train(
        recipe.model_copy(update={"seed": 8}),
        tmp_path / "other",
        progress=False,
        stop_after_epoch=0,
    )
    a = _state(tmp_path / "whole" / "checkpoints" / "epoch_000.pt")
    c = _state(other.last_checkpoint)["model"]
    assert any(not torch.equal(a["model"][k], c[k]) for k in c if c[k].is_floating_point())


def test_resume_refuses_a_different_recipe(workspace: Path, tmp_path: Path) -> None:
    from edge_asd.pretrain.data import RecipeError

    train(
        tiny_recipe(workspace, devset=None, epochs=1, steps_per_epoch=1),
        tmp_path / "r",
        progress=False,
    )
    changed = tiny_recipe(workspace, devset=None, epochs=1, steps_per_epoch=1, lr=1e-2)
    trainer = Trainer(changed, tmp_path / "r", progress=False)
    with pytest.raises(RecipeError, match="different recipe"):
        trainer.resume()


def test_cli_registers_without_importing_torch() -> None:
    code = (
        "import argparse, sys\n"
        "from edge_asd.pretrain.cli import register\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers(dest='cmd'))\n"
        "a = p.parse_args(['pretrain', 'train', '--out', 'x', '--epochs', '2'])\n"
        "assert a.epochs == 2 and callable(a.handler)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_train_and_missing_torch_message(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from edge_asd.pretrain import cli

    recipe_path = tmp_path / "recipe.yaml"
    import yaml

    raw = tiny_recipe(workspace, devset=None, epochs=1, steps_per_epoch=1).model_dump(mode="json")
    raw.pop("base_dir")
    recipe_path.write_text(yaml.safe_dump(raw))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        [
            "pretrain",
            "train",
            "--recipe",
            str(recipe_path),
            "--data-root",
            str(workspace),
            "--out",
            str(tmp_path / "cli-run"),
            "--no-progress",
            "--device",
            "cpu",
            "--objective",
            "denoise",
            "--set",
            "optim.lr=3e-3",
        ]
    )
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_done"] == 1
    assert Path(summary["last_checkpoint"]).is_file()
    # --objective overrides the recipe's objective.name (the experiment's variants).
    saved = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=False)
    assert saved["recipe"]["objective"]["name"] == "denoise"
    assert saved["recipe"]["optim"]["lr"] == 3e-3  # --set KEY=VALUE, VALUE read as YAML

    bad = parser.parse_args(
        ["pretrain", "train", "--recipe", str(tmp_path / "no.yaml"), "--out", "x"]
    )
    assert bad.handler(bad) == 2
    assert "no.yaml: cannot read recipe" in capsys.readouterr().err
    unknown = parser.parse_args(
        ["pretrain", "train", "--recipe", str(recipe_path), "--out", "x", "--set", "optim.nope=1"]
    )
    assert unknown.handler(unknown) == 2
    assert "optim.nope" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert args.handler(args) == 2
    assert "pip install 'edge-asd[train]'" in capsys.readouterr().err


def test_centre_crop_student_sees_what_the_teacher_sees() -> None:
    from edge_asd.pretrain.compact import CompactStudent
    from edge_asd.pretrain.teacher import YAMNET_INPUT_SAMPLES, centre_crop
    from edge_asd.pretrain.train import CentreCropStudent

    inner = CompactStudent(embedding_dim=8, width=4, window_samples=YAMNET_INPUT_SAMPLES).eval()
    wrapped = CentreCropStudent(inner, SAMPLE_RATE_HZ).eval()
    assert wrapped.window_samples == SAMPLE_RATE_HZ and wrapped.embedding_dim == 8
    x = np.random.default_rng(0).standard_normal((2, SAMPLE_RATE_HZ)).astype(np.float32) * 0.1
    cropped = np.ascontiguousarray(centre_crop(x, YAMNET_INPUT_SAMPLES))
    with torch.no_grad():
        a = wrapped(torch.from_numpy(x)).embedding
        b = inner(torch.from_numpy(cropped)).embedding
        c = inner(torch.from_numpy(x[:, :YAMNET_INPUT_SAMPLES].copy())).embedding
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_yamnet_port_teacher_matches_the_cropped_port() -> None:
    from edge_asd.pretrain.teacher import YamnetPortTeacher
    from edge_asd.pretrain.train import CentreCropStudent
    from edge_asd.pretrain.yamnet import YamnetPort

    torch.manual_seed(0)
    port = YamnetPort(truncate=False)  # random weights: the test needs no YAMNet file
    teacher = YamnetPortTeacher(port=port)
    assert (teacher.embedding_dim, teacher.num_classes) == (1024, 521)
    x = np.random.default_rng(1).standard_normal((2, SAMPLE_RATE_HZ)).astype(np.float32) * 0.1
    emb, scores = teacher.embed_and_scores(x)
    student = CentreCropStudent(port, SAMPLE_RATE_HZ).eval()
    with torch.no_grad():
        out = student(torch.from_numpy(x))
    # The default student (an exact copy) starts exactly on this teacher's targets.
    assert np.allclose(out.embedding.numpy(), emb, atol=1e-6)
    assert np.allclose(torch.sigmoid(out.logits).numpy(), scores, atol=1e-6)
    assert teacher.cache_id == YamnetPortTeacher(port=port).cache_id


def test_yamnet_port_teacher_at_an_intermediate_layer() -> None:
    import copy

    from edge_asd.pretrain.teacher import TeacherError, YamnetPortTeacher, make_teacher
    from edge_asd.pretrain.train import CentreCropStudent
    from edge_asd.pretrain.yamnet import YamnetPort

    torch.manual_seed(0)
    port = YamnetPort(truncate=False)
    teacher = YamnetPortTeacher(port=port, embedding_layer="8")
    assert port.embedding_layer == "final"  # the caller's port is not changed
    assert teacher.embedding_dim == 512
    assert teacher.cache_id.endswith("-layer8")
    assert teacher.cache_id != YamnetPortTeacher(port=port).cache_id
    x = np.random.default_rng(2).standard_normal((2, SAMPLE_RATE_HZ)).astype(np.float32) * 0.1
    emb, scores = teacher.embed_and_scores(x)
    student_port = copy.deepcopy(port)
    student_port.set_embedding_layer(8)
    student = CentreCropStudent(student_port, SAMPLE_RATE_HZ).eval()
    with torch.no_grad():
        out = student(torch.from_numpy(x))
    # A student read at layer 8 starts exactly on a layer-8 teacher (no projection head).
    assert np.allclose(out.embedding.numpy(), emb, atol=1e-6)
    assert np.allclose(torch.sigmoid(out.logits).numpy(), scores, atol=1e-6)
    with pytest.raises(TeacherError, match=r"embedding_layer is only available"):
        make_teacher("yamnet_tflite", Path("y.tflite"), embedding_layer="8")


def test_projection_head_starts_from_least_squares() -> None:
    from edge_asd.pretrain.train import fit_linear_projection

    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    w = rng.standard_normal((6, 9)).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)
    y = x @ w + bias
    layer = fit_linear_projection(x, y)
    with torch.no_grad():
        got = layer(torch.from_numpy(x)).numpy()
    assert np.allclose(got, y, atol=1e-2)
    assert np.allclose(layer.weight.detach().numpy(), w.T, atol=1e-2)
