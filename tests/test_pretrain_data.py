"""Pretraining data: recipe, labels, segments, mixtures at the asked SNR, batches, the
teacher interface and its disk cache. Audio is generated here; nothing is read from ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio.files import write_wav
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.pretrain.data import (
    MixingSpec,
    MixParams,
    RecipeError,
    Segment,
    SourceSpec,
    build_corpus,
    clean_count,
    epoch_plan,
    hard_tags,
    label_tag_indices,
    list_labelled_files,
    load_recipe,
    make_batch,
    mix,
    noise_gain,
    recipe_from_dict,
    render_segment,
    snr_db,
)
from edge_asd.pretrain.teacher import OnnxTeacher, TeacherCache, TeacherError, centre_crop

SNR_TOLERANCE_DB = 0.1
SEGMENT = SAMPLE_RATE_HZ


def _tone(seconds: float, hz: float, rng: np.random.Generator, amp: float = 0.2) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    x = amp * np.sin(2 * np.pi * hz * t) + 0.02 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """clean/{fan,pump}/*.wav (16 kHz), clean/loose.wav, noise/{hum,hiss}.wav (22.05 kHz)."""
    rng = np.random.default_rng(0)
    for sub in ("clean/fan", "clean/pump", "noise"):
        (tmp_path / sub).mkdir(parents=True)
    for machine, hz in (("fan", 180.0), ("pump", 95.0)):
        for i in range(3):
            write_wav(tmp_path / "clean" / machine / f"{i}.wav", _tone(2.0, hz * (1 + i / 10), rng))
    write_wav(tmp_path / "clean" / "loose.wav", _tone(1.5, 300.0, rng))
    noise_rate = 22_050
    n = 3 * noise_rate
    write_wav(tmp_path / "noise" / "hiss.wav", 0.1 * rng.standard_normal(n), noise_rate)
    t = np.arange(n) / noise_rate
    write_wav(tmp_path / "noise" / "hum.wav", 0.3 * np.sin(2 * np.pi * 50 * t), noise_rate)
    return tmp_path


def _recipe(root: Path, **mixing: object):
    return recipe_from_dict(
        {
            "seed": 3,
            "data": {
                "clean": [{"path": "clean", "label": "other"}],
                "noise": [{"path": "noise", "labels": "stem"}],
                "holdout_fraction": 0.2,
                "label_tags": {"fan": [1], "pump": [2], "hiss": [3]},
            },
            "mixing": {"perturb_variants": 1, **mixing},
            "teacher": {"kind": "onnx", "path": "teacher.onnx", "cache_dir": "cache"},
        },
        base_dir=root,
    )


def test_labels_from_subfolders_stems_and_csv(dataset: Path) -> None:
    sub = list_labelled_files(SourceSpec(path="clean", label="other"), dataset / "clean")
    assert [label for _, label in sub] == ["fan"] * 3 + ["other"] + ["pump"] * 3
    stems = list_labelled_files(SourceSpec(path="noise", labels="stem"), dataset / "noise")
    assert [label for _, label in stems] == ["hiss", "hum"]
    (dataset / "noise" / "labels.csv").write_text("file,label\nhiss.wav,white\nhum.wav,mains\n")
    csv_spec = SourceSpec(path="noise", labels="csv", csv="labels.csv")
    assert [lab for _, lab in list_labelled_files(csv_spec, dataset / "noise")] == [
        "white",
        "mains",
    ]
    (dataset / "noise" / "labels.csv").write_text("file,label\nhiss.wav,white\n")
    with pytest.raises(RecipeError, match=r"labels.csv: no label for 1 files, e.g. hum.wav"):
        list_labelled_files(csv_spec, dataset / "noise")


def test_recipe_errors_name_the_key(tmp_path: Path) -> None:
    good = {
        "data": {"clean": [{"path": "c"}], "noise": [{"path": "n"}]},
        "teacher": {"path": "t.onnx"},
    }
    recipe_from_dict(good)
    with pytest.raises(RecipeError, match=r"mixing.snr_db"):
        recipe_from_dict({**good, "mixing": {"snr_db": [5, -5]}})
    with pytest.raises(RecipeError, match=r"optim.learning_rate"):
        recipe_from_dict({**good, "optim": {"learning_rate": 1}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: not valid YAML"):
        load_recipe(bad)
    overridden = recipe_from_dict(good, overrides={"optim.epochs": 7, "mixing.clean_fraction": 0.5})
    assert overridden.optim.epochs == 7
    assert overridden.mixing.clean_fraction == 0.5


def test_committed_default_recipe_is_valid() -> None:
    recipe = load_recipe(
        Path(__file__).resolve().parents[1] / "edge_asd/pretrain/recipes/default.yaml"
    )
    assert recipe.objective.name == "denoise"  # the shipped model's objective (docs/results.md)
    assert recipe.objective.mix_lambda == 0.5
    assert recipe.mixing.snr_db == (-10.0, 10.0)
    assert recipe.student.kind == "yamnet"
    assert recipe.data.clean[0].path == "../shared/data/machine_normal_dev"
    # The exported layer is aligned with the same layer of the float teacher, and the noise
    # the dev set tests on (second half of each file) is never trained on.
    assert recipe.student.embedding_layer == recipe.teacher.embedding_layer == "8"
    assert recipe.teacher.kind == "yamnet_port"
    assert recipe.data.noise[0].span == (0.0, 0.5)


def test_span_keeps_only_that_part_of_each_file(dataset: Path) -> None:
    whole = build_corpus(_recipe(dataset))
    recipe = recipe_from_dict(
        {
            **_recipe(dataset).model_dump(mode="json", exclude={"base_dir"}),
            "data": {
                **_recipe(dataset).data.model_dump(mode="json"),
                "noise": [{"path": "noise", "labels": "stem", "span": [0.0, 0.5]}],
            },
        },
        base_dir=dataset,
    )
    half = build_corpus(recipe)
    for full, part in zip(whole.noise_files, half.noise_files, strict=True):
        assert part.samples.size == round(full.samples.size / 2)
        assert np.array_equal(part.samples, full.samples[: part.samples.size])
        # Teacher outputs are cached by (file hash, offset): a span must not reuse them.
        assert part.sha256 != full.sha256
    assert [f.sha256 for f in half.clean_files] == [f.sha256 for f in whole.clean_files]


@pytest.mark.parametrize("span", [[0.5, 0.5], [-0.1, 0.5], [0.2, 1.5]])
def test_invalid_span_names_the_key(span: list[float]) -> None:
    with pytest.raises(RecipeError, match=r"data.noise.0: .*span must satisfy"):
        recipe_from_dict(
            {
                "data": {"clean": [{"path": "c"}], "noise": [{"path": "n", "span": span}]},
                "teacher": {"path": "t.onnx"},
            }
        )


def test_teacher_layer_needs_the_port_teacher() -> None:
    data = {"clean": [{"path": "c"}], "noise": [{"path": "n"}]}
    with pytest.raises(RecipeError, match=r"teacher.*embedding_layer is only available"):
        recipe_from_dict({"data": data, "teacher": {"path": "t.onnx", "embedding_layer": "8"}})
    recipe = recipe_from_dict(
        {
            "data": data,
            "teacher": {"kind": "yamnet_port", "path": "y.tflite", "embedding_layer": "8"},
        }
    )
    assert recipe.teacher.embedding_layer == "8"


@pytest.mark.parametrize("target", [-10.0, -3.3, 0.0, 4.2, 10.0])
def test_mix_reaches_the_asked_snr(target: float) -> None:
    rng = np.random.default_rng(1)
    clean = _tone(1.0, 220.0, rng, amp=0.05)
    noise = (0.3 * rng.standard_normal(clean.size)).astype(np.float32)
    m = mix(clean, noise, MixParams(noise_index=0, snr_db=target, gain_db=0.0))
    assert abs(snr_db(clean, m - clean) - target) < SNR_TOLERANCE_DB
    assert noise_gain(clean, np.zeros_like(noise), target) == 0.0


def _fit_sources(m: np.ndarray, c: np.ndarray, n: np.ndarray | None) -> tuple[float, float]:
    """m = a c + b n by least squares (the overall gain and rescale are unknown scalars)."""
    basis = np.stack([c, n if n is not None else np.zeros_like(c)], axis=1).astype(np.float64)
    (a, b), *_ = np.linalg.lstsq(basis, m.astype(np.float64), rcond=None)
    return float(a), float(b)


def test_batches_have_clean_examples_and_mixtures_at_planned_snr(dataset: Path) -> None:
    recipe = _recipe(dataset, clean_fraction=0.25, gain_db=[-6.0, 12.0])
    corpus = build_corpus(recipe)
    plan = epoch_plan(
        len(corpus.train_segments),
        2,
        len(corpus.noise_segments),
        recipe.mixing,
        batch_size=8,
        seed=recipe.seed,
        epoch=0,
        steps=6,
    )
    clipped_whole = 0
    for planned in plan:
        batch = make_batch(corpus, planned)
        assert batch.mixture.shape == (8, SEGMENT)
        assert batch.is_clean.sum() == clean_count(8, 0.25) == 2
        for row, (_, _, params) in enumerate(planned):
            c = render_segment(corpus.clean_files, batch.clean_segments[row])
            nseg = batch.noise_segments[row]
            n = None if nseg is None else render_segment(corpus.noise_files, nseg)
            m = batch.mixture[row]
            assert np.max(np.abs(m)) <= 0.99 + 1e-6
            a, b = _fit_sources(m, c, n)
            if batch.is_clean[row]:
                assert n is None
                assert np.isnan(batch.snr_db[row])
                continue
            assert recipe.mixing.snr_db[0] <= params.snr_db <= recipe.mixing.snr_db[1]
            measured = snr_db(a * c, b * n)
            assert abs(measured - params.snr_db) < SNR_TOLERANCE_DB
            clipped_whole += int(abs(a - 10 ** (params.gain_db / 20)) > 1e-3)
    # With up to +12 dB of gain some mixtures are rescaled as a whole, keeping their SNR.
    assert clipped_whole > 0


def test_clean_fraction_zero_still_gives_one_clean_example() -> None:
    assert clean_count(16, 0.0) == 1
    assert clean_count(4, 1.0) == 4
    plan = epoch_plan(10, 1, 5, MixingSpec(clean_fraction=0.0), batch_size=4, seed=0, epoch=0)
    assert all(sum(p.noise_index < 0 for _, _, p in b) == 1 for b in plan)


def test_epoch_plan_is_deterministic_and_changes_with_epoch() -> None:
    spec = MixingSpec()
    a = epoch_plan(50, 2, 7, spec, batch_size=8, seed=11, epoch=3)
    b = epoch_plan(50, 2, 7, spec, batch_size=8, seed=11, epoch=3)
    c = epoch_plan(50, 2, 7, spec, batch_size=8, seed=11, epoch=4)
    assert a == b
    assert a != c
    # Without a step count an epoch is one pass: every item exactly once (within the pass).
    items = [item for batch in a for item, _, _ in batch]
    assert sorted(items[:50]) == list(range(50))


def test_holdout_files_are_disjoint_from_training(dataset: Path) -> None:
    recipe = _recipe(dataset)
    corpus = build_corpus(recipe)
    held = set(corpus.holdout_files)
    assert len(held) == round(0.2 * len(corpus.clean_files))
    assert all(s.file_index in held for s in corpus.holdout_segments)
    assert all(g[0].file_index not in held for g in corpus.train_segments)
    assert build_corpus(recipe).holdout_files == corpus.holdout_files
    # Noise at 22.05 kHz was resampled: 3 s gives 48 000 samples at 16 kHz.
    assert all(f.samples.size == 3 * SAMPLE_RATE_HZ for f in corpus.noise_files)


def test_perturbed_segments_are_deterministic_variants(dataset: Path) -> None:
    corpus = build_corpus(_recipe(dataset))
    plain, variant = corpus.train_segments[0]
    assert plain.speed == 1.0 and plain.eq_tilt_db == 0.0
    assert variant.offset == plain.offset and (variant.speed != 1.0 or variant.eq_tilt_db != 0.0)
    x = render_segment(corpus.clean_files, plain)
    f = corpus.clean_files[plain.file_index].samples
    assert np.array_equal(x, f[plain.offset : plain.offset + SEGMENT])
    y = render_segment(corpus.clean_files, variant)
    assert y.shape == x.shape and not np.allclose(x, y)
    assert np.array_equal(y, render_segment(corpus.clean_files, variant))
    assert build_corpus(_recipe(dataset)).train_segments[0] == [plain, variant]


def test_label_tags_resolve_names_and_indices() -> None:
    names = ["Speech", "Mechanisms", "White noise"]
    mapping = label_tag_indices({"fan": ["Mechanisms", 0], "hiss": ["White noise"]}, names, 3)
    assert mapping == {"fan": [1, 0], "hiss": [2]}
    tags = hard_tags(["fan", None, "unmapped", "hiss"], mapping, 3)
    assert tags.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(RecipeError, match=r"label_tags.fan: unknown class 'Fans'"):
        label_tag_indices({"fan": ["Fans"]}, names, 3)
    with pytest.raises(RecipeError, match=r"label_tags.fan: index 9"):
        label_tag_indices({"fan": [9]}, names, 3)


# ------------------------------------------------------------------ teachers and the cache


def make_onnx_teacher(
    path: Path, *, samples: int = SEGMENT, dim: int = 8, classes: int = 5
) -> Path:
    """A tiny random teacher: waveform [B, samples] -> embedding [B, dim], scores [B, classes].

    Frames of 100 samples -> random projection -> |.| -> mean over frames -> projection."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    frame = 100  # divides both 16 000 and 15 600
    w1 = rng.standard_normal((frame, 16)).astype(np.float32)
    w2 = (rng.standard_normal((16, dim)) / 4).astype(np.float32)
    w3 = rng.standard_normal((dim, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["waveform", "shape"], ["frames"]),
        helper.make_node("MatMul", ["frames", "w1"], ["proj"]),
        helper.make_node("Abs", ["proj"], ["mag"]),
        helper.make_node("ReduceMean", ["mag", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w2"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w3"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, -1, frame], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(w3, "w3"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_teacher",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", samples])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class CountingTeacher:
    """Wraps a teacher and counts the segments it is asked for."""

    def __init__(self, inner: OnnxTeacher) -> None:
        self.inner = inner
        self.name = inner.name
        self.cache_id = inner.cache_id
        self.embedding_dim = inner.embedding_dim
        self.num_classes = inner.num_classes
        self.calls = 0

    def embed_and_scores(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += len(segments)
        return self.inner.embed_and_scores(segments)


def test_onnx_teacher_outputs_and_errors(tmp_path: Path) -> None:
    teacher = OnnxTeacher(make_onnx_teacher(tmp_path / "t.onnx", samples=15_600))
    assert (teacher.embedding_dim, teacher.num_classes) == (8, 5)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((3, SEGMENT))).astype(np.float32)
    emb, scores = teacher.embed_and_scores(x)
    assert emb.shape == (3, 8) and scores.shape == (3, 5)
    assert np.all((scores > 0) & (scores < 1))
    # A fixed-size input is centre-cropped: 16 000 -> 15 600 drops 200 samples at each end.
    emb_crop, _ = teacher.embed_and_scores(x[:, 200:15_800])
    assert np.allclose(emb, emb_crop, atol=1e-6)
    assert centre_crop(np.arange(10.0)[None], 4).tolist() == [[3.0, 4.0, 5.0, 6.0]]
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(TeacherError, match=r"junk\.onnx: not a loadable ONNX model"):
        OnnxTeacher(tmp_path / "junk.onnx")
    with pytest.raises(TeacherError, match=r"missing\.onnx: teacher model not found"):
        OnnxTeacher(tmp_path / "missing.onnx")


def test_teacher_cache_computes_once_and_reuses_across_runs(dataset: Path) -> None:
    recipe = _recipe(dataset)
    corpus = build_corpus(recipe)
    path = make_onnx_teacher(dataset / "teacher.onnx")
    segments = [s for group in corpus.train_segments for s in group]
    first = CountingTeacher(OnnxTeacher(path))
    cache = TeacherCache(dataset / "cache", first)
    emb, scores = cache.get(corpus.clean_files, segments)
    assert first.calls == len(segments) == cache.computed
    direct_emb, direct_scores = first.inner.embed_and_scores(
        np.stack([render_segment(corpus.clean_files, s) for s in segments])
    )
    assert np.allclose(emb, direct_emb, atol=1e-6) and np.allclose(scores, direct_scores, atol=1e-6)

    # A new run (new objects) reads everything from disk.
    second = CountingTeacher(OnnxTeacher(path))
    emb2, scores2 = TeacherCache(dataset / "cache", second).get(corpus.clean_files, segments)
    assert second.calls == 0
    assert np.array_equal(emb, emb2) and np.array_equal(scores, scores2)

    # Only segments not seen before are computed; the key includes length and perturbation.
    extra = Segment(segments[0].file_index, segments[0].offset, SEGMENT, speed=1.01)
    third = CountingTeacher(OnnxTeacher(path))
    TeacherCache(dataset / "cache", third).get(corpus.clean_files, [*segments[:3], extra])
    assert third.calls == 1

    # Another teacher (different model bytes) has its own cache.
    other = make_onnx_teacher(dataset / "other.onnx", dim=6)
    fourth = CountingTeacher(OnnxTeacher(other))
    TeacherCache(dataset / "cache", fourth).get(corpus.clean_files, segments[:2])
    assert fourth.calls == 2


def test_devset_test_recordings_and_excluded_files_are_never_trained_on(dataset: Path) -> None:
    dev = dataset / "dev"
    dev.mkdir()
    (dev / "manifest.json").write_text('{"split": {"test_recordings": ["1"]}}')
    recipe = _recipe(dataset).model_copy(
        update={
            "validation": _recipe(dataset).validation.model_copy(update={"devset": "dev"}),
            "data": _recipe(dataset).data.model_copy(
                update={"exclude": ["loose"], "holdout_fraction": 0.0}
            ),
        }
    )
    corpus = build_corpus(recipe)
    held = sorted(
        corpus.clean_files[i].path.relative_to(dataset).as_posix() for i in corpus.holdout_files
    )
    assert held == ["clean/fan/1.wav", "clean/loose.wav", "clean/pump/1.wav"]
    trained = {corpus.clean_files[g[0].file_index].path.stem for g in corpus.train_segments}
    assert trained == {"0", "2"}
    (dev / "manifest.json").write_text('{"nothing": 1}')
    with pytest.raises(RecipeError, match=r"split\.test_recordings"):
        build_corpus(recipe)


def test_parse_layer_accepts_names_and_numbers_and_names_the_key() -> None:
    from edge_asd.pretrain.data import parse_layer

    assert parse_layer(None) == "final"
    assert parse_layer("final") == "final"
    assert parse_layer("8") == 8
    assert parse_layer(6) == 6
    with pytest.raises(RecipeError, match=r"embedding_layer: expected 'final' or a layer number"):
        parse_layer("eight")
