"""Bundle save/load: round trip, atomic replacement, and every refusal names the directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edge_asd.detection import bundle as bundle_module
from edge_asd.detection.bundle import (
    BANK_FILE,
    FORMAT_VERSION,
    META_FILE,
    Bundle,
    BundleError,
    load_bundle,
    save_bundle,
)
from edge_asd.detection.memory_bank import NO_EXCLUSION, MemoryBank
from edge_asd.model.contract import ModelInfo

N_ENTRIES = 50
DIM = 12
MODEL = ModelInfo(
    path="/models/fake.onnx",
    sha256="a" * 64,
    name="fake-encoder",
    version="1.2",
    sample_rate=16_000,
    window_samples=16_000,
    embedding_dim=DIM,
)
OTHER_MODEL = dataclasses.replace(MODEL, sha256="b" * 64, name="other-encoder", version="2.0")


WINDOWS_PER_CLIP = 10
NON_OVERLAPPING_WINDOWS = 2


def _bundle(labels: bool = True, seed: int = 0, groups: bool = False) -> Bundle:
    rng = np.random.default_rng(seed)
    clip = np.arange(N_ENTRIES) // WINDOWS_PER_CLIP
    index = np.arange(N_ENTRIES) % WINDOWS_PER_CLIP
    bank = MemoryBank(
        rng.normal(size=(N_ENTRIES, DIM)),
        k=2,
        groups=clip if groups else None,
        positions=index if groups else None,
        exclusion_windows=NON_OVERLAPPING_WINDOWS if groups else NO_EXCLUSION,
    )
    extra: dict[str, object] = {}
    if groups:
        extra = {
            "groups": bank.groups,
            "positions": bank.positions,
            "rho_scope": "non_overlapping",
            "exclusion_windows": bank.exclusion_windows,
        }
    return Bundle(
        embeddings=bank.embeddings,
        rho=bank.rho,
        labels=[f"cond{i % 3}" for i in range(N_ENTRIES)] if labels else None,
        k=2,
        method="density",
        threshold=1.234567891234,
        threshold_method="gamma",
        threshold_percentile=0.995,
        normal_stats={"n": 40, "mean": 0.8, "gamma": {"shape": 3.0, "loc": -0.01, "scale": 0.2}},
        model=MODEL,
        window_samples=16_000,
        hop_samples=8_000,
        sample_rate=16_000,
        sources=["a.wav", "b.wav"],
        **extra,  # type: ignore[arg-type]
    )


def _assert_same(a: Bundle, b: Bundle) -> None:
    for f in dataclasses.fields(Bundle):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb)
            assert va.dtype == vb.dtype
        else:
            assert va == vb, f.name


@pytest.mark.parametrize("groups", [True, False])
@pytest.mark.parametrize("labels", [True, False])
def test_round_trip_keeps_every_field(tmp_path: Path, labels: bool, groups: bool) -> None:
    original = _bundle(labels=labels, groups=groups)
    out = save_bundle(original, tmp_path / "bundle")
    assert sorted(p.name for p in out.iterdir()) == [BANK_FILE, META_FILE]
    loaded = load_bundle(out, model=MODEL)
    _assert_same(original, loaded)
    assert loaded.format_version == FORMAT_VERSION
    assert len(loaded.bundle_id) == 12
    # bundle.json is human-readable and holds no arrays.
    meta = json.loads((out / META_FILE).read_text())
    assert meta["model"]["name"] == "fake-encoder"
    assert "embeddings" not in meta
    assert meta["has_groups"] is groups
    assert meta["rho_scope"] == ("non_overlapping" if groups else "all")
    bank = loaded.memory_bank()
    assert bank.exclusion_windows == original.exclusion_windows
    if groups:
        assert loaded.groups is not None and loaded.groups.dtype == np.int64
        assert bank.groups is not None
        np.testing.assert_array_equal(bank.groups, original.groups)


def test_bundle_without_groups_from_before_they_existed_loads(tmp_path: Path) -> None:
    """A format_version 1 bundle written before groups: no keys, no arrays; it reads as the
    rho scope it was calibrated with ("all") and scores exactly as before."""
    original = _bundle()
    out = save_bundle(original, tmp_path / "old")
    meta = json.loads((out / META_FILE).read_text())
    for key in ("has_groups", "rho_scope", "exclusion_windows"):
        del meta[key]
    (out / META_FILE).write_text(json.dumps(meta))
    loaded = load_bundle(out, model=MODEL)
    assert (loaded.groups, loaded.positions) == (None, None)
    assert (loaded.rho_scope, loaded.exclusion_windows) == ("all", NO_EXCLUSION)
    queries = np.random.default_rng(5).normal(size=(4, DIM))
    np.testing.assert_array_equal(
        loaded.memory_bank().score(queries), original.memory_bank().score(queries)
    )


def test_bad_groups_and_scope_are_refused(tmp_path: Path) -> None:
    original = _bundle(groups=True)
    out = save_bundle(original, tmp_path / "b")
    assert original.groups is not None and original.positions is not None
    np.savez(
        out / BANK_FILE,
        embeddings=original.embeddings,
        rho=original.rho,
        labels=np.asarray(original.labels),
        groups=original.groups[:-1],
        positions=original.positions,
    )
    with pytest.raises(BundleError, match=r"groups has shape \(49,\)"):
        load_bundle(out)
    np.savez(
        out / BANK_FILE,
        embeddings=original.embeddings,
        rho=original.rho,
        labels=np.asarray(original.labels),
        groups=original.groups,
        positions=original.positions.astype(np.float64),
    )
    with pytest.raises(BundleError, match=r"positions in bank\.npz are not integers"):
        load_bundle(out)
    np.savez(
        out / BANK_FILE,
        embeddings=original.embeddings,
        rho=original.rho,
        labels=np.asarray(original.labels),
    )
    with pytest.raises(BundleError, match="lacks array 'groups"):
        load_bundle(out)
    out = save_bundle(original, tmp_path / "b")
    meta = json.loads((out / META_FILE).read_text())
    meta["rho_scope"] = "nearest"
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown rho_scope 'nearest'"):
        load_bundle(out)


def test_band_profile_round_trip_and_older_bundles_without_it(tmp_path: Path) -> None:
    from edge_asd.detection.explain import band_profile

    noise = np.random.default_rng(3).normal(scale=0.1, size=16_000).astype(np.float32)
    original = dataclasses.replace(_bundle(), band_profile=band_profile(noise))
    out = save_bundle(original, tmp_path / "with")
    loaded = load_bundle(out, model=MODEL)
    assert loaded.band_profile is not None and original.band_profile is not None
    np.testing.assert_allclose(
        loaded.band_profile.level_db, original.band_profile.level_db, atol=1e-3
    )
    np.testing.assert_allclose(
        loaded.band_profile.edges_hz, original.band_profile.edges_hz, atol=1e-3
    )
    assert loaded.band_profile.frames == original.band_profile.frames
    meta = json.loads((out / META_FILE).read_text())
    del meta["band_profile"]  # a bundle from before profiles existed
    (out / META_FILE).write_text(json.dumps(meta))
    assert load_bundle(out, model=MODEL).band_profile is None


def test_memory_bank_uses_stored_rho(tmp_path: Path) -> None:
    original = _bundle()
    fake_rho = np.linspace(0.1, 0.2, N_ENTRIES, dtype=np.float32)
    original.rho = fake_rho
    loaded = load_bundle(save_bundle(original, tmp_path / "b"))
    bank = loaded.memory_bank()
    np.testing.assert_array_equal(bank.rho, fake_rho)
    assert bank.k == 2 and bank.labels == original.labels


def test_numpy_scalars_are_saved_as_json_numbers(tmp_path: Path) -> None:
    original = dataclasses.replace(
        _bundle(),
        k=np.int64(2),
        threshold=np.float32(1.5),
        window_samples=np.int32(16_000),
        bundle_id="",
    )
    loaded = load_bundle(save_bundle(original, tmp_path / "b"))
    assert (loaded.k, loaded.threshold, loaded.window_samples) == (2, 1.5, 16_000)


def test_bundle_id_is_stable_and_content_dependent() -> None:
    a, b = _bundle(seed=0), _bundle(seed=0)
    assert a.bundle_id == b.bundle_id
    assert _bundle(seed=1).bundle_id != a.bundle_id
    changed = dataclasses.replace(a, threshold=2.0, bundle_id="")
    assert changed.bundle_id != a.bundle_id


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    save_bundle(_bundle(seed=0), target)
    second = _bundle(seed=1)
    save_bundle(second, target)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert load_bundle(target).bundle_id == second.bundle_id


def test_failed_save_keeps_old_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "bundle"
    first = _bundle(seed=0)
    save_bundle(first, target)

    def broken_dump(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(_bundle(seed=1), target)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert load_bundle(target).bundle_id == first.bundle_id


def test_interrupted_replace_is_pointed_out(tmp_path: Path) -> None:
    """A crash between the two renames leaves the old bundle aside, and load says where."""
    target = tmp_path / "bundle"
    save_bundle(_bundle(), target)
    aside = tmp_path / ".bundle.old-deadbeef"
    target.rename(aside)
    with pytest.raises(BundleError, match=r"previous bundle at .*\.bundle\.old-deadbeef"):
        load_bundle(target)


def test_relative_and_trailing_slash_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    save_bundle(_bundle(), "rel/")
    save_bundle(_bundle(seed=1), "rel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]
    assert load_bundle("rel").bundle_id == _bundle(seed=1).bundle_id


def test_refuses_to_replace_a_non_bundle_dir(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match=r"home.*not a bundle directory"):
        save_bundle(_bundle(), precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_missing_dir_and_files(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"nowhere.*does not exist"):
        load_bundle(tmp_path / "nowhere")
    out = save_bundle(_bundle(), tmp_path / "b")
    (out / BANK_FILE).unlink()
    with pytest.raises(BundleError, match=rf"{out}.*{BANK_FILE} is missing"):
        load_bundle(out)
    (out / META_FILE).unlink()
    with pytest.raises(BundleError, match=rf"{META_FILE} is missing"):
        load_bundle(out)


def test_corrupt_json_and_npz(tmp_path: Path) -> None:
    out = save_bundle(_bundle(), tmp_path / "b")
    good_meta = (out / META_FILE).read_text()
    (out / META_FILE).write_text(good_meta[: len(good_meta) // 2])
    with pytest.raises(BundleError, match=rf"{out}.*not valid JSON"):
        load_bundle(out)
    (out / META_FILE).write_text(good_meta)
    raw = (out / BANK_FILE).read_bytes()
    (out / BANK_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match=rf"{out}.*{BANK_FILE} is corrupt"):
        load_bundle(out)


def test_wrong_format_version_and_missing_key(tmp_path: Path) -> None:
    out = save_bundle(_bundle(), tmp_path / "b")
    meta = json.loads((out / META_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"format_version 2 is not supported"):
        load_bundle(out)
    meta["format_version"] = FORMAT_VERSION
    del meta["threshold"]
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"lacks key 'threshold'"):
        load_bundle(out)


def test_shape_mismatches(tmp_path: Path) -> None:
    original = _bundle()
    out = save_bundle(original, tmp_path / "b")
    np.savez(out / BANK_FILE, embeddings=original.embeddings, rho=original.rho[:-1])
    meta = json.loads((out / META_FILE).read_text())
    meta["has_labels"] = False
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"rho has shape \(49,\)"):
        load_bundle(out)
    np.savez(out / BANK_FILE, embeddings=original.embeddings[:, :5], rho=original.rho)
    with pytest.raises(BundleError, match=r"embeddings have shape \(50, 5\)"):
        load_bundle(out)


def test_bank_from_another_bundle_is_detected(tmp_path: Path) -> None:
    out = save_bundle(_bundle(seed=0), tmp_path / "b")
    other = _bundle(seed=1, labels=False)
    np.savez(out / BANK_FILE, embeddings=other.embeddings, rho=other.rho)
    meta = json.loads((out / META_FILE).read_text())
    meta["has_labels"] = False
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not belong together"):
        load_bundle(out)


def test_model_mismatch_message(tmp_path: Path) -> None:
    out = save_bundle(_bundle(), tmp_path / "b")
    with pytest.raises(BundleError) as info:
        load_bundle(out, model=OTHER_MODEL)
    message = str(info.value)
    assert str(out) in message
    assert "fake-encoder 1.2 (sha256 aaaaaaaaaaaa" in message
    assert "other-encoder 2.0 (sha256 bbbbbbbbbbbb" in message
    assert message.endswith("recalibrate")
