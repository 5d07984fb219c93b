"""The pretraining loop: seeded, resumable, validated on the core's ASD scoring each epoch.

Reproducibility: seeds (python, numpy, torch) come from the recipe; the data order of an epoch
is a pure function of (seed, epoch) (`data.epoch_plan`), so a checkpoint only needs the model,
optimiser, scheduler, RNG states and the epoch to make `--resume` give the same weights as an
uninterrupted run (tests/test_pretrain_train.py checks it).

Validation each epoch (rank 0):
- retention check: mean cosine similarity between the student's projected embeddings and the
  teacher's on held-out CLEAN segments (1.0 = the teacher's view kept);
- held-out loss on fixed mixtures of held-out clean files;
- ASD score on a DCASE-layout dev set (`validation.devset`, built by benchmarks/make_devset.py,
  read by `offline.dcase` as `edge-asd evaluate` reads it): the torch student, wrapped as an
  `EmbeddingModel`, feeds the core's own pipeline (`pipeline.embed_recording` for the memory
  bank of the train clips' windows, `scoring.ClipScorer` on the test clips,
  `metrics.dcase_section_metrics` and `metrics.official_score`).

Distributed: under `torchrun` (WORLD_SIZE > 1) the process group is initialised, batches are
split over ranks with a DistributedSampler (batch_size is per process), the model is wrapped in
DistributedDataParallel, and only rank 0 fills the teacher cache, validates and writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.pipeline import EmbeddingModel, embed_recording
from edge_asd.detection.scoring import ClipScorer
from edge_asd.model.contract import ModelInfo
from edge_asd.offline.dcase import EvaluationError, discover_sections
from edge_asd.offline.metrics import dcase_section_metrics, official_score
from edge_asd.pretrain.compact import CompactStudent
from edge_asd.pretrain.data import (
    AudioReader,
    Corpus,
    Recipe,
    RecipeError,
    Segment,
    ValidationSpec,
    build_corpus,
    epoch_plan,
    hard_tags,
    label_tag_indices,
    make_batch,
    parse_layer,
    read_class_map,
    recipe_digest,
    recipe_from_dict,
)
from edge_asd.pretrain.losses import LossTerms, ObjectiveConfig, objective_loss, source_tags
from edge_asd.pretrain.student import Student, as_student, count_parameters
from edge_asd.pretrain.teacher import Teacher, TeacherCache, make_teacher

_LOGGER = logging.getLogger(__name__)

CHECKPOINT_DIR: Final = "checkpoints"
LAST_CHECKPOINT: Final = "last.pt"
HISTORY_FILE: Final = "history.jsonl"
CHECKPOINT_FORMAT: Final = 1
EMBED_BATCH: Final = 32
"""Windows per student call during validation."""
HOLDOUT_SEED_OFFSET: Final = 7_919
"""Held-out mixtures use their own seed so they are the same every epoch and every run."""


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, Gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()


def pick_device(requested: str | None) -> torch.device:
    """`cuda` when asked or when present (and not asked for cpu); CPU otherwise."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA device is available")
    if requested == "cpu" or (requested is None and not torch.cuda.is_available()):
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local)


# --------------------------------------------------------------------------- seeds and RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic version; CPU runs are exact.
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- models


def build_student(recipe: Recipe, teacher_dim: int, num_classes: int) -> nn.Module:
    """The recipe's student: the YAMNet port (exact copy of the teacher) or the compact CNN."""
    spec = recipe.student
    if spec.kind == "yamnet":
        from edge_asd.pretrain.yamnet import YamnetPort

        path = recipe.resolve(spec.tflite or recipe.teacher.path)
        assert path is not None
        layer = parse_layer(spec.embedding_layer)
        # truncate=False: the tagging head needs the final layer even when the embedding is
        # read from an earlier one.
        port = YamnetPort.from_tflite(path, embedding_layer=layer, truncate=False)
        return CentreCropStudent(port, recipe.segment_samples)
    return CompactStudent(
        embedding_dim=spec.embedding_dim,
        num_classes=num_classes,
        teacher_dim=teacher_dim,
        width=spec.width,
        window_samples=recipe.segment_samples,
    )


class CentreCropStudent(nn.Module):
    """Feeds `inner` the centre `inner.window_samples` of each `window_samples` window.

    YAMNet's embedding depends on the exact input length (its stride-2 layers and SAME padding
    put a 98-frame input on another grid than the 96 frames of 15 600 samples: cosine 0.5-0.8
    between the two on machine audio). The teacher sees the centre 15 600 samples of a 1.0 s
    segment, so the student must see the same samples, in training and in the exported model;
    the crop is inside the module, so the ONNX file still takes the contract's 1.0 s windows.
    """

    def __init__(self, inner: nn.Module, window_samples: int) -> None:
        super().__init__()
        s = as_student(inner)
        if window_samples < s.window_samples:
            raise RecipeError(
                f"data.segment_seconds: {window_samples} samples is shorter than the student's "
                f"input ({s.window_samples})"
            )
        self.inner = inner
        self.window_samples = window_samples
        self.crop_samples = s.window_samples
        self.num_classes = s.num_classes
        self.embedding_dim = s.embedding_dim

    def set_embedding_layer(self, layer: Any) -> None:
        self.inner.set_embedding_layer(layer)  # type: ignore[operator]
        self.embedding_dim = as_student(self.inner).embedding_dim

    def forward(self, waveform: Tensor) -> Any:
        start = (waveform.shape[1] - self.crop_samples) // 2
        return self.inner(waveform[:, start : start + self.crop_samples])


class TrainModule(nn.Module):
    """Student plus the projection head to the teacher's dimension (training only)."""

    def __init__(self, student: nn.Module, teacher_dim: int) -> None:
        super().__init__()
        self.student = student
        own = getattr(student, "projection", None)
        dim = as_student(student).embedding_dim
        if isinstance(own, nn.Module):
            self.projection: nn.Module = nn.Identity()
            self._student_projects = True
        else:
            self.projection = nn.Identity() if dim == teacher_dim else nn.Linear(dim, teacher_dim)
            self._student_projects = False

    def forward(self, waveform: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        out = self.student(waveform)
        if self._student_projects:
            projected = self.student.get_submodule("projection")(out.embedding)
        else:
            projected = self.projection(out.embedding)
        return projected, out.logits, out.embedding


PROJECTION_RIDGE: Final = 1e-3
"""Relative ridge term of the projection's least-squares start (times mean diag of X^T X)."""
PROJECTION_FIT_SEGMENTS: Final = 512


def fit_linear_projection(x: np.ndarray, y: np.ndarray) -> nn.Linear:
    """Ridge least-squares Linear map x [N, D] -> y [N, De] (with bias).

    A fresh projection head maps the student's embedding to random directions, so its first
    alignment gradients would push the backbone around for nothing; starting from the best
    linear map of the (still teacher-identical) student to the teacher avoids that.
    """
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    mx, my = x64.mean(axis=0), y64.mean(axis=0)
    xc, yc = x64 - mx, y64 - my
    gram = xc.T @ xc
    ridge = PROJECTION_RIDGE * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    w = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), xc.T @ yc)  # [D, De]
    layer = nn.Linear(x.shape[1], y.shape[1])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        layer.bias.copy_(torch.from_numpy((my - mx @ w).astype(np.float32)))
    return layer


def freeze(module: nn.Module, prefixes: Sequence[str]) -> int:
    """Freeze parameters whose name starts with one of `prefixes`; returns how many."""
    frozen = 0
    for name, param in module.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            frozen += param.numel()
    if prefixes and frozen == 0:
        raise RecipeError(f"optim.freeze_prefixes: {list(prefixes)} match no parameter")
    return frozen


class TorchEncoder:
    """A torch student as the core's `EmbeddingModel` (scoring.ClipScorer, calibration)."""

    def __init__(self, student: nn.Module, device: torch.device, *, name: str = "student") -> None:
        self.student = student
        self.device = device
        s = as_student(student)
        self._info = ModelInfo(
            path="<torch>",
            sha256="",
            name=name,
            version="training",
            sample_rate=SAMPLE_RATE_HZ,
            window_samples=s.window_samples,
            embedding_dim=s.embedding_dim,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @torch.no_grad()
    def embed(self, windows: np.ndarray) -> np.ndarray:
        was_training = self.student.training
        self.student.eval()
        parts = []
        for start in range(0, len(windows), EMBED_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(windows[start : start + EMBED_BATCH]))
            parts.append(self.student(x.to(self.device)).embedding.float().cpu().numpy())
        self.student.train(was_training)
        dim = self._info.embedding_dim
        return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


# --------------------------------------------------------------------------- targets


@dataclass
class Targets:
    """Teacher outputs for every fixed segment of the corpus, row-aligned with `index`."""

    clean_emb: np.ndarray
    clean_scores: np.ndarray
    clean_index: dict[Segment, int]
    noise_emb: np.ndarray
    noise_scores: np.ndarray
    holdout_emb: np.ndarray
    holdout_scores: np.ndarray


def teacher_targets(corpus: Corpus, cache: TeacherCache, *, progress: bool) -> Targets:
    """Fill (or read) the teacher cache for every segment of `corpus`."""
    flat = [s for group in corpus.train_segments for s in group]
    clean_emb, clean_scores = cache.get(corpus.clean_files, flat, progress=progress)
    noise_emb, noise_scores = cache.get(
        corpus.noise_files, corpus.noise_segments, progress=progress
    )
    hold_emb, hold_scores = cache.get(
        corpus.clean_files, corpus.holdout_segments, progress=progress
    )
    return Targets(
        clean_emb=clean_emb,
        clean_scores=clean_scores,
        clean_index={s: i for i, s in enumerate(flat)},
        noise_emb=noise_emb,
        noise_scores=noise_scores,
        holdout_emb=hold_emb,
        holdout_scores=hold_scores,
    )


@dataclass
class TensorBatch:
    mixture: Tensor
    t_clean: Tensor
    t_noise: Tensor
    clean_tags: Tensor
    noise_tags: Tensor
    is_clean: Tensor


class _PlannedBatches(Dataset[TensorBatch]):
    """Batch b of an epoch plan, rendered with its teacher targets (a map-style data set of
    whole batches, so a DistributedSampler can split batches over ranks)."""

    def __init__(
        self,
        corpus: Corpus,
        plan: list[list[Any]],
        targets_for: Any,
    ) -> None:
        self.corpus = corpus
        self.plan = plan
        self.targets_for = targets_for

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> TensorBatch:
        return self.targets_for(self.plan[index])


# --------------------------------------------------------------------------- trainer


@dataclass
class TrainResult:
    out_dir: Path
    epochs_done: int
    steps_done: int
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    seconds: float = 0.0


class Trainer:
    """Everything one run needs; `fit()` runs the remaining epochs."""

    def __init__(
        self,
        recipe: Recipe,
        out_dir: Path,
        *,
        device: str | None = None,
        epochs: int | None = None,
        progress: bool = True,
        reader: AudioReader | None = None,
        teacher: Teacher | None = None,
    ) -> None:
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.device = pick_device(device)
        self.dist = init_distributed(self.device)
        self.progress = progress and self.dist.is_main
        self.epochs = epochs or recipe.optim.epochs
        seed_everything(recipe.seed)
        devset = recipe.resolve(recipe.validation.devset)
        if devset is not None and not devset.is_dir():
            # Fail before the teacher cache and the model are built, not an epoch later.
            raise RecipeError(
                f"validation.devset: {devset} is not a directory; build it with "
                f"`python benchmarks/make_devset.py --out {devset}` or set validation.devset: null"
            )
        self.corpus = build_corpus(recipe, reader)
        teacher_path = recipe.resolve(recipe.teacher.path)
        assert teacher_path is not None
        self.teacher = teacher or make_teacher(
            recipe.teacher.kind, teacher_path, embedding_layer=recipe.teacher.embedding_layer
        )
        cache_dir = recipe.resolve(recipe.teacher.cache_dir)
        assert cache_dir is not None
        self.cache = TeacherCache(cache_dir, self.teacher)
        if self.dist.is_main:
            self.targets = teacher_targets(self.corpus, self.cache, progress=self.progress)
        _barrier(self.dist)
        if not self.dist.is_main:
            self.targets = teacher_targets(self.corpus, self.cache, progress=False)
        self.num_classes = self.teacher.num_classes
        class_names = None
        if recipe.teacher.class_map:
            class_map = recipe.resolve(recipe.teacher.class_map)
            assert class_map is not None
            class_names = read_class_map(class_map)
        self.tag_map = label_tag_indices(recipe.data.label_tags, class_names, self.num_classes)
        # Model init draws from the torch RNG: seeded above, so every rank starts identical.
        student = build_student(recipe, self.teacher.embedding_dim, self.num_classes)
        s = as_student(student)
        if s.num_classes not in (0, self.num_classes):
            raise RecipeError(
                f"student has {s.num_classes} classes, teacher {self.teacher.name} "
                f"{self.num_classes}: the tagging targets cannot be formed"
            )
        if s.window_samples > recipe.segment_samples:
            raise RecipeError(
                f"data.segment_seconds: {recipe.segment_samples} samples is shorter than the "
                f"student's window ({s.window_samples})"
            )
        # Prefixes name the bare student's parameters (e.g. the port's `layers.0.`).
        self.frozen = freeze(getattr(student, "inner", student), recipe.optim.freeze_prefixes)
        self.model = TrainModule(student, self.teacher.embedding_dim)
        if isinstance(self.model.projection, nn.Linear):
            self.model.projection = self._initial_projection(student)
        self.model.to(self.device)
        self.student: Student = as_student(self.model.student)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay
        )
        self.steps_per_epoch = math.ceil(
            (recipe.optim.steps_per_epoch or self._default_steps()) / self.dist.world_size
        )
        total = max(1, self.steps_per_epoch * self.epochs)
        warmup = recipe.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _warmup_cosine(step, warmup, total)
        )
        self.objective = ObjectiveConfig(**recipe.objective.model_dump())
        self.start_epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._devset: list[DevSection] | None = None
        self._holdout_index = {s: i for i, s in enumerate(self.corpus.holdout_segments)}
        _LOGGER.info(
            "student %s: %d parameters (%d frozen), device %s, world %d",
            type(student).__name__,
            count_parameters(student),
            self.frozen,
            self.device,
            self.dist.world_size,
        )

    @torch.no_grad()
    def _initial_projection(self, student: nn.Module) -> nn.Linear:
        """Least-squares start of the projection head on unperturbed training segments."""
        from edge_asd.pretrain.data import render_segment

        segs = [group[0] for group in self.corpus.train_segments][:PROJECTION_FIT_SEGMENTS]
        was_training = student.training
        student.eval()
        parts = []
        for start in range(0, len(segs), EMBED_BATCH):
            audio = np.stack(
                [
                    render_segment(self.corpus.clean_files, s)
                    for s in segs[start : start + EMBED_BATCH]
                ]
            )
            parts.append(student(torch.from_numpy(audio)).embedding.numpy())
        student.train(was_training)
        rows = [self.targets.clean_index[s] for s in segs]
        layer = fit_linear_projection(np.concatenate(parts), self.targets.clean_emb[rows])
        _LOGGER.info(
            "projection head %s fitted on %d segments", tuple(layer.weight.shape), len(segs)
        )
        return layer

    def _default_steps(self) -> int:
        return max(1, math.ceil(len(self.corpus.train_segments) / self.recipe.optim.batch_size))

    # ---------------------------------------------------------------- batches

    def _tensor_batch(
        self, plan: list[Any], groups: Any = None, holdout: bool = False
    ) -> TensorBatch:
        batch = make_batch(self.corpus, plan, groups)
        t = self.targets
        if holdout:
            rows = [self._holdout_index[s] for s in batch.clean_segments]
            t_c, s_c = t.holdout_emb[rows], t.holdout_scores[rows]
        else:
            rows = [t.clean_index[s] for s in batch.clean_segments]
            t_c, s_c = t.clean_emb[rows], t.clean_scores[rows]
        n_rows = [p.noise_index for _, _, p in plan]
        t_n = np.where(batch.is_clean[:, None], 0.0, t.noise_emb[np.maximum(n_rows, 0)]).astype(
            np.float32
        )
        s_n = np.where(batch.is_clean[:, None], 0.0, t.noise_scores[np.maximum(n_rows, 0)]).astype(
            np.float32
        )
        c = self.num_classes
        hard_c = torch.from_numpy(hard_tags(batch.clean_labels, self.tag_map, c))
        hard_n = torch.from_numpy(hard_tags(batch.noise_labels, self.tag_map, c))
        clean_tags = source_tags(hard_c, torch.from_numpy(s_c))
        noise_tags = source_tags(hard_n, torch.from_numpy(s_n))
        return TensorBatch(
            mixture=torch.from_numpy(batch.mixture),
            t_clean=torch.from_numpy(np.ascontiguousarray(t_c)),
            t_noise=torch.from_numpy(t_n),
            clean_tags=clean_tags,
            noise_tags=noise_tags,
            is_clean=torch.from_numpy(batch.is_clean),
        )

    def _plan(self, epoch: int) -> list[list[Any]]:
        r = self.recipe
        return epoch_plan(
            len(self.corpus.train_segments),
            1 + r.mixing.perturb_variants,
            len(self.corpus.noise_segments),
            r.mixing,
            batch_size=r.optim.batch_size,
            seed=r.seed,
            epoch=epoch,
            steps=self.steps_per_epoch * self.dist.world_size,
        )

    def _loader(self, epoch: int) -> DataLoader[TensorBatch]:
        data = _PlannedBatches(self.corpus, self._plan(epoch), self._tensor_batch)
        sampler: Any
        if self.dist.enabled:
            sampler = DistributedSampler(
                data, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=False
            )
            sampler.set_epoch(epoch)
        else:
            sampler = SequentialSampler(data)
        return DataLoader(data, batch_size=None, sampler=sampler, num_workers=0)

    def _loss(self, tb: TensorBatch, net: nn.Module) -> LossTerms:
        dev = self.device
        projected, logits, _ = net(tb.mixture.to(dev))
        return objective_loss(
            self.objective,
            projected=projected,
            logits=logits,
            t_clean=tb.t_clean.to(dev),
            t_noise=tb.t_noise.to(dev),
            clean_tags=tb.clean_tags.to(dev),
            noise_tags=tb.noise_tags.to(dev),
            is_clean=tb.is_clean.to(dev),
        )

    # ---------------------------------------------------------------- checkpoints

    def checkpoint_path(self, epoch: int | None = None) -> Path:
        name = LAST_CHECKPOINT if epoch is None else f"epoch_{epoch:03d}.pt"
        return self.out_dir / CHECKPOINT_DIR / name

    def save_checkpoint(self, epoch: int) -> Path:
        state = {
            "format": CHECKPOINT_FORMAT,
            "recipe": self.recipe.model_dump(mode="json"),
            "recipe_digest": recipe_digest(self.recipe),
            "epochs": self.epochs,
            "epoch": epoch,
            "step": self.step,
            "student_kind": self.recipe.student.kind,
            "teacher": {
                "cache_id": self.teacher.cache_id,
                "embedding_dim": self.teacher.embedding_dim,
                "num_classes": self.teacher.num_classes,
            },
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        }
        path = self.checkpoint_path(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        last = self.checkpoint_path()
        tmp_last = last.with_suffix(".tmp")
        torch.save(state, tmp_last)
        os.replace(tmp_last, last)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RecipeError(f"{path}: unknown checkpoint format {state.get('format')!r}")
        if state["recipe_digest"] != recipe_digest(self.recipe):
            raise RecipeError(
                f"{path}: checkpoint was trained with a different recipe; resume needs the same"
            )
        if state["epochs"] != self.epochs:
            raise RecipeError(
                f"{path}: checkpoint planned {state['epochs']} epochs, this run {self.epochs}; "
                "the LR schedule depends on it"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"]) + 1
        self.step = int(state["step"])
        self.history = list(state["history"])
        _LOGGER.info("resumed from %s at epoch %d, step %d", path, self.start_epoch, self.step)

    def resume(self) -> bool:
        """Load `last.pt` if present; returns whether it did."""
        path = self.checkpoint_path()
        if not path.is_file():
            _LOGGER.warning("%s: no checkpoint to resume from; starting fresh", path)
            return False
        self.load_checkpoint(path)
        return True

    # ---------------------------------------------------------------- loop

    def fit(self, *, stop_after_epoch: int | None = None) -> TrainResult:
        """Train epochs start_epoch..epochs-1 (or up to `stop_after_epoch`, inclusive, which
        simulates an interruption)."""
        from tqdm import tqdm

        started = time.monotonic()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.start_epoch == 0:
                self.history = [{"epoch": -1, **self.validate()}]
                self._log(self.history[-1])
        last_path = None
        for epoch in range(self.start_epoch, self.epochs):
            self.net.train()
            sums: dict[str, float] = {}
            loader = self._loader(epoch)
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="step",
                disable=not self.progress,
            )
            for tb in bar:
                terms = self._loss(tb, self.net)
                self.optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                if self.recipe.optim.grad_clip_norm:
                    nn.utils.clip_grad_norm_(
                        self.model.parameters(), self.recipe.optim.grad_clip_norm
                    )
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                values = terms.as_floats()
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            n = max(1, len(loader))
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": self.step,
                "lr": self.scheduler.get_last_lr()[0],
                **{f"train_{k}": v / n for k, v in sums.items()},
            }
            if self.dist.is_main:
                record.update(self.validate())
                self.history.append(record)
                self._log(record)
                last_path = self.save_checkpoint(epoch)
            _barrier(self.dist)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
        done = self.history[-1]["epoch"] + 1 if self.history else 0
        return TrainResult(
            out_dir=self.out_dir,
            epochs_done=done,
            steps_done=self.step,
            history=self.history,
            last_checkpoint=last_path,
            seconds=time.monotonic() - started,
        )

    def _log(self, record: dict[str, Any]) -> None:
        brief = {
            k: float(f"{v:.4g}") if isinstance(v, float) else v
            for k, v in record.items()
            if k != "dev_sections"
        }
        _LOGGER.info("epoch %s: %s", record.get("epoch"), brief)
        with (self.out_dir / HISTORY_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    # ---------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Retention check, held-out loss and (with a dev set) the ASD official score."""
        out: dict[str, Any] = {}
        was_training = self.model.training
        self.model.eval()
        holdout = self.corpus.holdout_segments
        if holdout:
            out.update(self._holdout_metrics(holdout))
        if self.recipe.validation.devset:
            out.update(self._dev_score())
        self.model.train(was_training)
        return out

    def _holdout_metrics(self, holdout: list[Segment]) -> dict[str, float]:
        from edge_asd.pretrain.data import render_segment

        sims = []
        for start in range(0, len(holdout), EMBED_BATCH):
            segs = holdout[start : start + EMBED_BATCH]
            audio = torch.from_numpy(
                np.stack([render_segment(self.corpus.clean_files, s) for s in segs])
            )
            projected, _, _ = self.model(audio.to(self.device))
            target = torch.from_numpy(self.targets.holdout_emb[start : start + len(segs)])
            sims.append(nn.functional.cosine_similarity(projected.cpu(), target, dim=1).numpy())
        out = {"retention_cosine": float(np.mean(np.concatenate(sims)))}
        n_batches = self.recipe.validation.holdout_batches
        if n_batches:
            groups = [[s] for s in holdout]
            plan = epoch_plan(
                len(groups),
                1,
                len(self.corpus.noise_segments),
                self.recipe.mixing,
                batch_size=self.recipe.optim.batch_size,
                seed=self.recipe.seed + HOLDOUT_SEED_OFFSET,
                epoch=0,
                steps=n_batches,
            )
            losses = [
                self._loss(self._tensor_batch(b, groups, holdout=True), self.model).as_floats()
                for b in plan
            ]
            for key in losses[0]:
                out[f"holdout_{key}"] = float(np.mean([x[key] for x in losses]))
        return out

    def _dev_score(self) -> dict[str, Any]:
        spec = self.recipe.validation
        if self._devset is None:
            root = self.recipe.resolve(spec.devset)
            assert root is not None
            self._devset = load_devset(root, spec.max_train_clips, spec.sections)
        return devset_score(TorchEncoder(self.model.student, self.device), self._devset, spec)


def devset_score(
    encoder: EmbeddingModel, devset: Sequence[DevSection], spec: ValidationSpec
) -> dict[str, Any]:
    """The ASD official score of `encoder` (any `EmbeddingModel`) on dev-set sections, through
    the core's pipeline: a memory bank of every train window (`embed_recording`), test clips
    scored by `ClipScorer` (the per-epoch validation, and the export's report)."""
    window = round(spec.window_seconds * SAMPLE_RATE_HZ)
    hop = round(spec.hop_seconds * SAMPLE_RATE_HZ)
    sections = {}
    for section in devset:
        train = [embed_recording(encoder, clip, window, hop) for clip in section.train]
        bank = MemoryBank(np.concatenate(train), k=spec.k)
        scorer = ClipScorer(
            encoder, bank, method=spec.score_method, window_samples=window, hop_samples=hop
        )
        scores = [scorer.score_clip(clip).clip_score for clip in section.test]
        sections[section.name] = dcase_section_metrics(section.is_anomaly, scores, section.domains)
    return {
        "dev_official_score": official_score(sections.values()),
        "dev_sections": {k: v.to_dict() for k, v in sections.items()},
    }


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up, then cosine decay to 10 % of the base LR."""
    floor = 0.1
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- dev set


@dataclass(frozen=True)
class DevSection:
    """A section of the dev set (`offline.dcase.Section`) with its audio read once: it is
    scored every epoch."""

    name: str
    train: list[np.ndarray]
    test: list[np.ndarray]
    is_anomaly: list[bool]
    domains: list[str]


def load_devset(
    root: Path, max_train_clips: int | None = None, names: Sequence[str] | None = None
) -> list[DevSection]:
    """The sections of a DCASE-layout dev set, read by `offline.dcase` as `edge-asd evaluate`
    reads them: all, or those in `names`; at most `max_train_clips` train clips each."""
    from edge_asd.audio.files import read_wav

    if not root.is_dir():
        raise RecipeError(
            f"validation.devset: {root} is not a directory; build it with "
            f"`python benchmarks/make_devset.py --out {root}` or set validation.devset: null"
        )
    try:
        sections = discover_sections(root)
    except EvaluationError as exc:
        raise RecipeError(f"validation.devset: {exc}") from None
    if names is not None:
        wanted = set(names)
        missing = sorted(wanted - {s.name for s in sections})
        if missing:
            raise RecipeError(f"validation.sections: {root} has no section {missing[0]!r}")
        sections = [s for s in sections if s.name in wanted]
    loaded = []
    for section in sections:
        train = section.train[:max_train_clips] if max_train_clips else section.train
        loaded.append(
            DevSection(
                section.name,
                [read_wav(c.path, target_rate=SAMPLE_RATE_HZ) for c in train],
                [read_wav(c.path, target_rate=SAMPLE_RATE_HZ) for c in section.test],
                [c.is_anomaly for c in section.test],
                [c.domain for c in section.test],
            )
        )
    return loaded


# --------------------------------------------------------------------------- entry points


def train(
    recipe: Recipe,
    out_dir: Path,
    *,
    resume: bool = False,
    device: str | None = None,
    epochs: int | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    reader: AudioReader | None = None,
    teacher: Teacher | None = None,
) -> TrainResult:
    """Train (or resume) per `recipe`, writing checkpoints and history under `out_dir`."""
    trainer = Trainer(
        recipe,
        out_dir,
        device=device,
        epochs=epochs,
        progress=progress,
        reader=reader,
        teacher=teacher,
    )
    try:
        if resume:
            trainer.resume()
        return trainer.fit(stop_after_epoch=stop_after_epoch)
    finally:
        if trainer.dist.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


def load_student(checkpoint: Path, *, map_location: str = "cpu") -> tuple[nn.Module, Recipe]:
    """Rebuild the student of a checkpoint (architecture from its recipe) with its weights."""
    try:
        state = torch.load(checkpoint, map_location=map_location, weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise RecipeError(f"{checkpoint}: cannot read checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RecipeError(f"{checkpoint}: not an edge-asd pretraining checkpoint")
    recipe = recipe_from_dict(state["recipe"], source=str(checkpoint))
    teacher = state["teacher"]
    student = build_student(recipe, teacher["embedding_dim"], teacher["num_classes"])
    prefix = "student."
    weights = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    student.load_state_dict(weights)
    student.eval()
    return student, recipe


def export_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    *,
    name: str,
    version: str,
    layer: str | None = None,
    calibration_windows: int = 64,
    reader: AudioReader | None = None,
) -> dict[str, Any]:
    """Export a checkpoint's student: fp32 ONNX, int8 ONNX and `<name>-parity.json` (part A's
    `export.export_int8`). int8 is calibrated on windows of the recipe's training clean files
    and checked on windows of its held-out files (fresh audio)."""
    student, recipe = load_student(checkpoint)
    if layer is not None:
        setter = getattr(student, "set_embedding_layer", None)
        if setter is None:
            raise RecipeError(f"--layer: student {type(student).__name__} has no layers to pick")
        setter(parse_layer(layer))
    report = export_student(
        student,
        recipe,
        out_dir,
        name=name,
        version=version,
        calibration_windows=calibration_windows,
        reader=reader,
    )
    return {**report, "checkpoint": str(checkpoint)}


def export_student(
    student: nn.Module,
    recipe: Recipe,
    out_dir: Path,
    *,
    name: str,
    version: str,
    calibration_windows: int = 64,
    reader: AudioReader | None = None,
) -> dict[str, Any]:
    """`export_checkpoint` for a student in memory (e.g. the un-fine-tuned start point)."""
    from edge_asd.pretrain.export import export_int8, windows_from_signals

    corpus = build_corpus(recipe, reader)
    window = recipe.segment_samples
    held = set(corpus.holdout_files)
    train_signals = [f.samples for i, f in enumerate(corpus.clean_files) if i not in held]
    parity_signals = [corpus.clean_files[i].samples for i in corpus.holdout_files] or train_signals
    per_train = max(1, math.ceil(calibration_windows / max(1, len(train_signals))))
    calib = windows_from_signals(train_signals, window, per_train)[:calibration_windows]
    per_parity = max(1, math.ceil(calibration_windows / max(1, len(parity_signals))))
    parity = windows_from_signals(parity_signals, window, per_parity)[:calibration_windows]
    result = export_int8(
        student,
        out_dir,
        name=name,
        version=version,
        calibration_windows=calib,
        parity_windows=parity,
        window_samples=window,
    )
    report = result.report
    if report.get("int8_ms_p50"):
        report["speed_ratio_fp32_over_int8"] = report["fp32_ms_p50"] / report["int8_ms_p50"]
    report.update(_export_dev_scores(recipe, result.fp32_path, result.int8_path))
    (Path(out_dir) / f"{name}-parity.json").write_text(json.dumps(report, indent=2) + "\n")
    return {
        "fp32": str(result.fp32_path),
        "int8": str(result.int8_path),
        "parity": report,
        "embedding_dim": as_student(student).embedding_dim,
    }


def _export_dev_scores(recipe: Recipe, fp32: Path, int8: Path) -> dict[str, Any]:
    """The change in dev ASD score from fp32 to int8 (the recipe's validation sections), or
    nothing when the recipe names no dev set or it is not there."""
    from edge_asd.model.encoder import Encoder

    spec = recipe.validation
    root = recipe.resolve(spec.devset) if spec.devset else None
    if root is None or not root.is_dir():
        _LOGGER.info("no dev set (validation.devset): the parity report has no dev ASD score")
        return {}
    devset = load_devset(root, spec.max_train_clips, spec.sections)
    fp32_score = devset_score(Encoder(fp32), devset, spec)["dev_official_score"]
    int8_score = devset_score(Encoder(int8), devset, spec)["dev_official_score"]
    return {
        "dev_sections": [section.name for section in devset],
        "dev_official_score_fp32": fp32_score,
        "dev_official_score_int8": int8_score,
        "dev_score_change": int8_score - fp32_score,
    }
