"""The training loop (METHOD section 6), with Accelerate for devices, mixed precision and `accelerate launch`.

One step: a batch of pairs (whole image, anomaly part) -> both VAE latents -> one timestep per pair shared by
its two rows, independent noise per row -> the dual UNet (with BCM, one background row per pair rides in the
same call, noised to the pair's timestep, conditioning only) -> epsilon MSE over the pair rows -> AdamW.

Every random draw is a function of (seed, step) or (seed, epoch): data order, flips (the dataset's own
(seed, epoch, index) rule), VAE sampling, timesteps, noise. So (adapter weights, AdamW moments, step) is the
whole state, and a run resumed from a checkpoint computes exactly what the uninterrupted run computes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.mvtec import DefectSample
from ..data.pairs import DefectPairDataset, default_flips
from ..errors import InputError
from ..io import remove_temporaries, write_json_atomic
from ..locking import output_lock
from ..masks.foreground import foreground_kind
from ..model.base import check_resolution, read_base_shape, read_sampling_recipe
from ..model.dual_unet import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_state_dict, load_adapter_state
from ..model.encode import GLOBAL_PROMPT, PART_PROMPT, encode_latents
from ..progress import progress_bar
from ..sharding import launcher_shard
from .checkpoint import (
    CHECKPOINTS,
    LOSS_LOG,
    list_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    truncate_loss_log,
)
from .config import TrainConfig, identity, resolve_config, steps_per_epoch, total_steps
from .probe import ProbeSet, append_probe_row, build_probe_set, row_losses, truncate_probe_log
from .sources import (
    data_hash,
    expand_anomaly_types,
    training_samples,
    write_estimated_foregrounds,
    write_fewshot_masks,
)

log = logging.getLogger(__name__)

TRAIN_CONFIG = "train_config.json"
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPS = 1e-8
MAX_GRAD_NORM = 1.0
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

StepCallback = Callable[[int, float], None]


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, keys...), well mixed by numpy's SeedSequence."""
    return int(
        np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0] >> 1
    )


_INIT, _EPOCH, _STEP, _PROBE = 0, 1, 2, 3  # key spaces of `derived_seed`


def epoch_order(seed: int, epoch: int, num_samples: int) -> list[int]:
    """The sample order of one epoch."""
    g = torch.Generator().manual_seed(derived_seed(seed, _EPOCH, epoch))
    return torch.randperm(num_samples, generator=g).tolist()


def batch_indices(
    seed: int, step: int, num_samples: int, batch_size: int, num_processes: int = 1, process_index: int = 0
) -> tuple[int, list[int]]:
    """(epoch, sample indices) of this process at optimizer step ``step`` (0-based).

    One process: consecutive slices of the epoch order, the last one possibly short. Several: each step takes
    ``batch_size * num_processes`` samples, wrapping around the epoch order so every process gets a full batch.
    """
    spe = steps_per_epoch(num_samples, batch_size, num_processes)
    epoch, b = divmod(step, spe)
    order = epoch_order(seed, epoch, num_samples)
    if num_processes == 1:
        return epoch, order[b * batch_size : (b + 1) * batch_size]
    start = (b * num_processes + process_index) * batch_size
    return epoch, [order[i % num_samples] for i in range(start, start + batch_size)]


def is_finished(run_dir: Path) -> bool:
    """Final adapters are present (`save_adapters` writes the weights first, the config last)."""
    return (run_dir / ADAPTER_WEIGHTS).is_file() and (run_dir / ADAPTER_CONFIG).is_file()


def _check_same_run(
    run_dir: Path, config: TrainConfig, data: str, what: str, total: int | None = None
) -> None:
    """Refuse ``what`` in ``run_dir`` unless it was made with this config's identity and these training files
    (and, for finished adapters, ``total`` steps): a folder is only ever reused for the same result."""
    path = run_dir / TRAIN_CONFIG
    if not path.is_file():
        raise InputError(
            f"{run_dir} holds {what} without its {TRAIN_CONFIG}, so what they were trained with is unknown; use "
            "another --out, or --no-resume to discard them and start over"
        )
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); --no-resume discards this run") from None
    saved, now = recorded.get("identity", {}), identity(config, data)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    details = [f"{k}: {saved.get(k)!r} before, {now.get(k)!r} now" for k in diff]
    if "data" in diff:
        details[diff.index("data")] = "the training images or masks differ (content hash)"
    if total is not None and recorded.get("total_steps") != total:
        details.append(
            f"length: {recorded.get('total_steps')} steps before, {total} now (--max-steps/--epochs/--batch-size)"
        )
    if details:
        raise InputError(
            f"{run_dir} holds {what} made with other settings ({'; '.join(details)}); use another --out, "
            "or --no-resume to discard it and start over"
        )


def native_resolution(base: str) -> int:
    """The image size a base model was made for (UNet sample size x VAE factor), read from its configs only."""
    return read_base_shape(base).native_resolution


def complete_config(config: TrainConfig) -> TrainConfig:
    """Fill the options that depend on the base or the anomaly type (resolution, flips) and check those the
    base bounds (resolution a multiple of the VAE factor, LoRA ranks), reading the base's configs only."""
    shape = read_base_shape(config.base)
    resolution = check_resolution(config.resolution, shape)
    for name, rank, limit in (
        ("--rank", config.rank, shape.max_lora_rank),
        ("--text-encoder-rank", config.text_encoder_rank, shape.max_text_lora_rank),
    ):
        if rank > limit:
            raise InputError(
                f"{name}: {rank} is above {limit}, the widest projection it adapts in {config.base}: a LoRA of "
                f"rank {limit} is already full rank there"
            )
    flips = default_flips(config.category or "", config.anomaly) if config.flips is None else config.flips
    return replace(config, resolution=resolution, flips=flips)


def _load_pipeline(config: TrainConfig):
    from ..model.dual_unet import AdapterConfig
    from ..pipeline import DualAnoDiffPipeline

    # Adapter initialisation draws from torch's global generator: seed it, without disturbing the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(config.seed, _INIT))
        return DualAnoDiffPipeline.from_pretrained(
            config.base,
            AdapterConfig(
                rank=config.rank,
                alpha=config.alpha,
                saim=config.saim,
                saim_zero_init=config.saim_zero_init,
                bcm=config.bcm,
                text_encoder_rank=config.text_encoder_rank,
                background_latent_scaling=config.background_latent_scaling,
            ),
        )


def _freeze_base_in(pipe, dtype: torch.dtype, trainable: list[torch.nn.Parameter]) -> None:
    """Cast the frozen base weights to ``dtype``; trainable parameters stay fp32 (autocast mixes them)."""
    keep = {id(p) for p in trainable}
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        for p in module.parameters():
            if id(p) not in keep and p.is_floating_point():
                p.data = p.data.to(dtype)


def train_adapters(config: TrainConfig, on_step: StepCallback | None = None) -> Path:
    """Train the adapters of one anomaly type (``config.anomaly``); returns their folder.

    The folder ``out/<category>/<anomaly>/`` gets ``adapters.safetensors`` + ``adapter_config.json`` (load with
    ``DualAnoDiffPipeline.load_adapters``), ``train_config.json`` (the resolved config), ``loss_log.csv``, and
    while running ``checkpoints/``. An interrupted run resumes from its last checkpoint; a finished one returns
    at once. ``on_step(step, loss)`` is called after every optimizer step (1-based step).
    """
    config = resolve_config(config)
    if config.anomaly is None or "," in config.anomaly or config.anomaly == "all":
        if config.uses_folder and config.anomaly is None:
            config.anomaly = expand_anomaly_types(config, None)[0]
        else:
            raise InputError("train_adapters trains one anomaly type; use train_anomaly_types for several")
    samples = training_samples(config)
    return _train_validated(config, samples, on_step)


def train_anomaly_types(config: TrainConfig, anomalies: str | list[str] | None = None) -> dict[str, Path]:
    """Train several anomaly types (``'all'``, a comma list, or a list), one adapter set each.

    All types' data are validated first, so a bad file fails before hours of training; types whose
    final adapters exist are skipped.
    """
    config = resolve_config(config)
    spec = ",".join(anomalies) if isinstance(anomalies, list) else (anomalies or config.anomaly)
    kinds = expand_anomaly_types(config, spec)
    jobs = []
    for kind in kinds:
        job = TrainConfig.from_dict({**config.to_dict(), "anomaly": kind})
        jobs.append((job, training_samples(job)))
    out = {}
    for job, samples in jobs:
        out[job.anomaly] = _train_validated(job, samples, None)
    return out


def _train_validated(config: TrainConfig, samples: list[DefectSample], on_step: StepCallback | None) -> Path:
    from accelerate import PartialState

    config = complete_config(config)
    read_sampling_recipe(config.base)  # a broken recipe file is refused now, not after training
    run_dir = config.output_dir()
    data = data_hash(samples)
    total = total_steps(config, len(samples), PartialState().num_processes)
    # One run per folder; the ranks of one `accelerate launch` join it as shards of one run.
    ranks = launcher_shard()
    with output_lock(run_dir, "train", shard=ranks):
        if ranks.index == 0:  # only the main process writes here
            remove_temporaries(run_dir)
            remove_temporaries(run_dir / CHECKPOINTS)
        return _train_locked(config, samples, run_dir, data, total, on_step)


def _train_locked(
    config: TrainConfig,
    samples: list[DefectSample],
    run_dir: Path,
    data: str,
    total: int,
    on_step: StepCallback | None,
) -> Path:
    if not config.resume:
        remove_checkpoints(run_dir)
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRAIN_CONFIG, LOSS_LOG):
            (run_dir / name).unlink(missing_ok=True)
    if is_finished(run_dir):
        _check_same_run(run_dir, config, data, "finished adapters", total)
        log.info("%s: already trained with these settings and files, skipped", run_dir)
        return run_dir
    found = list_checkpoints(run_dir)
    if found:
        _check_same_run(run_dir, config, data, "checkpoints")
        if found[-1][0] > total:
            raise InputError(
                f"{found[-1][1]}: a checkpoint at step {found[-1][0]}, beyond this run's {total} steps; give at "
                "least that many (--max-steps/--epochs), or --no-resume to start over"
            )
    write_fewshot_masks(samples, run_dir)
    if config.bcm and foreground_kind(config.foreground) in ("auto", "u2net"):
        samples = write_estimated_foregrounds(config, samples, run_dir / "foreground")
    AdapterTrainer(config, samples, run_dir, data).run(on_step)
    return run_dir


def _accelerator(mixed_precision: str):
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    try:
        accelerator = Accelerator(mixed_precision=mixed_precision)
    except ValueError:
        # Accelerate keeps one global state per process; a single-process caller (a notebook, the tests)
        # training first in fp32 then in bf16 may switch it. Under `accelerate launch` the error stands.
        if PartialState().num_processes != 1:
            raise
        AcceleratorState._reset_state()
        accelerator = Accelerator(mixed_precision=mixed_precision)
    launched = launcher_shard().count
    if accelerator.num_processes != launched:
        # Each process would train alone and write the same folder: refuse instead.
        raise InputError(
            f"started as {launched} processes, but Accelerate sees {accelerator.num_processes}, so each would "
            "train alone into the same folder; on a machine without GPUs set ACCELERATE_USE_CPU=1 so that "
            "Accelerate joins them"
        )
    return accelerator


class AdapterTrainer:
    """The models and state of one run (a resolved, completed config); `run` trains from the last
    checkpoint to the end. `train_adapters` is the usual entry; this class is public for inspection."""

    def __init__(
        self, config: TrainConfig, samples: list[DefectSample], run_dir: Path, data: str | None = None
    ):
        from diffusers import DDPMScheduler

        self.accelerator = _accelerator(config.mixed_precision)
        if config.mixed_precision == "fp16" and self.accelerator.device.type == "cpu":
            # Accelerate has no fp16 autocast on CPU: the fp16 base would meet fp32 activations.
            raise InputError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 (or no)")
        self.pipe = pipe = _load_pipeline(config)
        self.config, self.samples, self.run_dir = config, samples, run_dir
        self.data_hash = data or data_hash(samples)
        self.dataset = DefectPairDataset(
            samples,
            resolution=config.resolution,
            flips=config.flips,
            with_background=config.bcm,
            seed=config.seed,
        )
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

        self.trainable = pipe.adapter_parameters()
        for p in self.trainable:
            p.requires_grad_(True)
        self.param_names = _parameter_names(pipe, self.trainable)
        _freeze_base_in(pipe, _DTYPES[config.mixed_precision], self.trainable)
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        pipe.vae.requires_grad_(False).eval().to(self.accelerator.device)
        pipe.unet.train()
        pipe.text_encoder.train()
        optimizer = torch.optim.AdamW(
            self.trainable,
            lr=config.learning_rate,
            betas=ADAM_BETAS,
            weight_decay=ADAM_WEIGHT_DECAY,
            eps=ADAM_EPS,
        )
        self.unet, self.text_encoder, self.optimizer = self.accelerator.prepare(
            pipe.unet, pipe.text_encoder, optimizer
        )
        tok = pipe.tokenizer
        # The same tokenisation as `model.encode.encode_prompts`, done once: the ids never change.
        self.prompt_ids = tok(
            [GLOBAL_PROMPT, PART_PROMPT],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.accelerator.device)
        self.total = total_steps(config, len(samples), self.accelerator.num_processes)
        self._probe: ProbeSet | None = None

    # ---- one step ------------------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[int, dict[str, torch.Tensor]]:
        acc = self.accelerator
        epoch, idx = batch_indices(
            self.config.seed,
            step,
            len(self.samples),
            self.config.batch_size,
            acc.num_processes,
            acc.process_index,
        )
        self.dataset.set_epoch(epoch)
        items = [self.dataset[i] for i in idx]
        return epoch, {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def step_loss(self, step: int) -> tuple[int, torch.Tensor]:
        """(epoch, loss) of optimizer step ``step`` (0-based), with the graph for backward."""
        cfg, acc = self.config, self.accelerator
        device = acc.device
        epoch, batch = self._batch(step)
        pairs = batch["image"].shape[0]
        gen = torch.Generator().manual_seed(derived_seed(cfg.seed, _STEP, step, acc.process_index))
        with torch.no_grad():
            latents, bg = self._latents(batch, gen)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (pairs,), generator=gen)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        bg_noise = torch.randn(bg.shape, generator=gen).to(device) if bg is not None else None
        pred = self._noise_pred(self.unet, self.text_encoder, latents, t, noise, bg, bg_noise)
        # Background rows are conditioning only: the loss is over the 2B pair rows, all weighted equally.
        loss = F.mse_loss(pred, noise.float(), reduction="mean")
        return epoch, loss

    def _latents(
        self, batch: dict[str, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """VAE latents of a batch: pair rows interleaved [g0, p0, g1, p1, ...] (2B, C, h, w), and with BCM the
        backgrounds (B, C, h, w)."""
        cfg, pipe = self.config, self.pipe
        # (B, 2, 3, R, R) -> (2B, 3, R, R).
        x = torch.stack([batch["image"], batch["part"]], dim=1).flatten(0, 1)
        latents = encode_latents(pipe.vae, x, gen).float()
        bg = None
        if cfg.bcm:
            scale = cfg.background_latent_scaling == "correct"
            bg = encode_latents(pipe.vae, batch["background"], gen, scale=scale).float()
        return latents, bg

    def _noise_pred(
        self,
        unet: torch.nn.Module,
        text_encoder: torch.nn.Module,
        latents: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        bg: torch.Tensor | None = None,
        bg_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet's noise prediction (float32) for the 2B pair rows of ``latents`` noised to ``t`` (one
        timestep per pair, shared by its two rows); with BCM one background row per pair rides in the same call,
        noised to the pair's timestep."""
        device = self.accelerator.device
        pairs = t.shape[0]
        t_rows = t.repeat_interleave(2).to(device)
        noisy = self.noise_scheduler.add_noise(latents.to(device), noise.to(device), t_rows)
        emb = text_encoder(self.prompt_ids)[0]  # (2, 77, D): global, part; recomputed (LoRA trains)
        text = emb.repeat(pairs, 1, 1)
        kwargs = None
        if bg is not None:
            noisy = torch.cat(
                [noisy, self.noise_scheduler.add_noise(bg.to(device), bg_noise.to(device), t.to(device))]
            )
            t_rows = torch.cat([t_rows, t.to(device)])
            text = torch.cat([text, emb[:1].expand(pairs, -1, -1)])
            kwargs = {"background_rows": pairs}
        with self.accelerator.autocast():
            pred = unet(noisy, t_rows, encoder_hidden_states=text, cross_attention_kwargs=kwargs).sample
        return pred[: 2 * pairs].float()

    # ---- the probe loss (`training.probe`) -----------------------------------------------------------
    def _probe_set(self) -> ProbeSet:
        """Built once per process: every few-shot pair unflipped, its draws from the run's seed."""
        if self._probe is None:
            cfg = self.config
            dataset = DefectPairDataset(
                self.samples, resolution=cfg.resolution, flips=False, with_background=cfg.bcm, seed=cfg.seed
            )
            items = [dataset[i] for i in range(len(dataset))]
            batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
            gen = torch.Generator().manual_seed(derived_seed(cfg.seed, _PROBE))
            with torch.no_grad():
                latents, bg = self._latents(batch, gen)
            latents = latents.cpu()
            bg = bg.cpu() if bg is not None else None
            self._probe = build_probe_set(latents, self.noise_scheduler.config.num_train_timesteps, gen, bg)
        return self._probe

    @torch.no_grad()
    def probe_loss(self) -> dict[str, float]:
        """The probe's figures for the adapters as they are now (`training.probe.row_losses`).

        Runs the unwrapped models in eval mode, in chunks of the training batch size, on this process only: no
        collective is involved, so the main process alone may call it."""
        probe, size = self._probe_set(), max(1, int(self.config.batch_size))
        unet, text_encoder = self.pipe.unet, self.pipe.text_encoder
        unet.eval()
        text_encoder.eval()
        try:
            preds = []
            for i in range(0, probe.pairs, size):
                rows = slice(2 * i, 2 * (i + size))
                bg = probe.background[i : i + size] if probe.background is not None else None
                bg_noise = probe.background_noise[i : i + size] if bg is not None else None
                t = probe.timesteps[i : i + size]
                preds.append(
                    self._noise_pred(
                        unet, text_encoder, probe.latents[rows], t, probe.noise[rows], bg, bg_noise
                    )
                )
        finally:
            unet.train()
            text_encoder.train()
        return row_losses(torch.cat(preds).cpu(), probe.noise)

    # ---- the run -------------------------------------------------------------------------------------
    def _state(self, elapsed: float) -> dict:
        scaler = self.accelerator.scaler
        return {
            "elapsed_s": elapsed,
            "identity": identity(self.config, self.data_hash),
            "base_weights": self.pipe.base_fingerprint,
            "parameters": self.param_names,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "rng": "none stored: every draw derives from (seed, step) or (seed, epoch)",
        }

    def _resume(self) -> tuple[int, float]:
        found = list_checkpoints(self.run_dir)
        if not found:
            return 0, 0.0
        step, path = found[-1]
        ckpt = load_checkpoint(path, self.optimizer.state_dict()["param_groups"])
        if ckpt.state.get("parameters") != self.param_names:
            raise InputError(f"checkpoint {path} holds other trainable parameters than this model")
        saved, now = ckpt.state.get("base_weights"), self.pipe.base_fingerprint
        if saved and now and saved != now:
            raise InputError(
                f"checkpoint {path} was trained on other base weights ({saved}) than {self.config.base} has now "
                f"({now}); use the base it was trained on, or --no-resume to start over"
            )
        load_adapter_state(ckpt.adapters, self.pipe.unet, self.pipe.text_encoder, source=str(path))
        self.optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.state.get("grad_scaler") and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(ckpt.state["grad_scaler"])
        log.info("%s: resuming from step %d", self.run_dir, step)
        return step, float(ckpt.state.get("elapsed_s", 0.0))

    def run(self, on_step: StepCallback | None) -> None:
        cfg, acc = self.config, self.accelerator
        main = acc.is_main_process
        start, elapsed0 = self._resume()
        if main:
            info = {"total_steps": self.total, "train_images": [str(s.image) for s in self.samples]}
            write_json_atomic(
                self.run_dir / TRAIN_CONFIG,
                {"config": cfg.to_dict(), "identity": identity(cfg, self.data_hash), **info},
            )
            truncate_loss_log(self.run_dir, start)
            truncate_probe_log(self.run_dir, start)
        probing = main and cfg.probe_every > 0
        if probing and start == 0:
            append_probe_row(self.run_dir, 0, self.probe_loss())
        t0 = time.perf_counter()
        bar = progress_bar(
            total=self.total,
            initial=start,
            desc=f"train {cfg.category or ''}/{cfg.anomaly}",
            unit="step",
            disable=not (cfg.progress and main),
        )
        with open(self.run_dir / LOSS_LOG, "a", encoding="utf-8") as log_file:
            for step in range(start, self.total):
                epoch, loss = self.step_loss(step)
                value = acc.reduce(loss.detach(), reduction="mean").item()
                if not math.isfinite(value):
                    raise self._diverged(step + 1, f"the loss is {value}")
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.trainable, MAX_GRAD_NORM)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                done = step + 1
                elapsed = elapsed0 + time.perf_counter() - t0
                lr = self.optimizer.param_groups[0]["lr"]
                if main:
                    log_file.write(f"{done},{epoch},{value:.6g},{lr:.6g},{elapsed:.3f}\n")
                    log_file.flush()
                if probing and (done % cfg.probe_every == 0 or done == self.total):
                    append_probe_row(self.run_dir, done, self.probe_loss())
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", epoch=epoch)
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < self.total:
                    self._check_weights_finite(done)
                    acc.wait_for_everyone()
                    if main:
                        save_checkpoint(
                            self.run_dir,
                            done,
                            adapter_state_dict(self.pipe.unet, self.pipe.text_encoder),
                            self.optimizer.state_dict(),
                            self._state(elapsed),
                            cfg.keep_checkpoints,
                        )
                if on_step is not None:
                    on_step(done, value)
        bar.close()
        self._check_weights_finite(self.total)
        acc.wait_for_everyone()
        if main:
            extra = {"training": {**cfg.to_dict(), "total_steps": self.total}}
            recipe = read_sampling_recipe(cfg.base)
            if recipe:  # the base's sampling settings travel with its adapters (`generate --preset adapters`)
                extra["sampling"] = recipe
            self.pipe.save_adapters(
                self.run_dir,
                extra=extra,
                dtype=cfg.save_dtype,
            )
            remove_checkpoints(self.run_dir)

    def _check_weights_finite(self, step: int) -> None:
        """Before anything is saved: a step can leave NaN weights behind a finite loss (an overflowing update)."""
        with torch.no_grad():
            finite = torch.stack([torch.isfinite(p).all() for p in self.trainable]).all().item()
        if not finite:
            raise self._diverged(step, "the adapter weights hold NaN or infinite values")

    def _diverged(self, step: int, what: str) -> InputError:
        """The error that stops a diverged run: where, the likely cause, and what was kept."""
        found = list_checkpoints(self.run_dir)
        kept = (
            f"the last good checkpoint ({found[-1][1]}, step {found[-1][0]}) is kept"
            if found
            else "no checkpoint was written before it"
        )
        return InputError(
            f"{self.run_dir}: training diverged at step {step} of {self.total}: {what}. The likely cause is a "
            f"learning rate too high for this setup (--lr {self.config.learning_rate:g}); {kept} and no adapters "
            "were saved. Run again with a lower --lr and --no-resume"
        )


def _parameter_names(pipe, params: list[torch.nn.Parameter]) -> list[str]:
    """Names of the trainable parameters, in optimizer order (checked on resume)."""
    names = {id(p): f"unet.{n}" for n, p in pipe.unet.named_parameters()}
    names.update({id(p): f"text_encoder.{n}" for n, p in pipe.text_encoder.named_parameters()})
    return [names[id(p)] for p in params]
