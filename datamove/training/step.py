"""The pieces of a training loop shared by every trainer, so that comparisons are fair by construction."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from errno import EFBIG, ENOSPC
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from datamove.config import ConfigError, StudyConfig
from datamove.models import Surrogate, build_network
from datamove.problems import Normalisation
from datamove.problems.samples import SampleSpec

TARGETS = ("state", "delta")  # trainer.target: what the network of an autoregressive surrogate predicts


def pick_device(name: str) -> torch.device:
    """``auto`` is cuda when a GPU is visible, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device is '{name}' but no CUDA device is available")
    return device


def delta_scale(y: torch.Tensor, spec: SampleSpec, norm: Normalisation, *, chunk: int = 1024) -> tuple[float, ...]:
    """The scale of delta targets (``trainer.target: delta``): per field, the root mean square of
    its change over one stride (a window's last two steps) over the held-out samples ``y``
    [N, L x n_fields, ny, nx] raw
    (:func:`datamove.training.heldout.load_heldout`), in raw units; [n_fields].

    Measured on the held-out members, as the normalisation is, so that training members never set
    it. A field that never changes there takes its normalisation span instead (no division by 0).
    """
    if not spec.autoregressive:
        raise ValueError("trainer.target delta needs trainer.sample autoregressive")
    nf = spec.n_fields
    sq = torch.zeros(nf, dtype=torch.float64)
    for i in range(0, y.shape[0], chunk):  # float64 sums, a chunk at a time: no full-size copy
        # The change over one stride: each window's last two steps (a pair: its input and target).
        yb = y[i : i + chunk]
        sq += (yb[:, -nf:].double() - yb[:, -2 * nf : -nf].double()).square().sum(dim=(0, 2, 3)).cpu()
    n = max(y.shape[0], 1) * y[0, 0].numel()
    rms = (sq / n).sqrt().tolist()
    spans = [hi - lo for lo, hi in zip(norm.y_low, norm.y_high)]
    return tuple(r if r > 0 else (span if span > 0 else 1.0) for r, span in zip(rms, spans))


def surrogate_args(
    cfg: StudyConfig, norm: Normalisation, *, delta: Sequence[float] | None = None
) -> dict[str, Any]:
    """Everything needed to rebuild the model (saved in checkpoints): its name and arguments, the
    shapes, the problem's normalisation ``norm`` (from the held-out members, see
    :meth:`datamove.problems.Problem.normalisation`) and, with ``trainer.target: delta``, the
    per-field scale of the changes ``delta`` (:func:`delta_scale`)."""
    target, spec = cfg.trainer.target, SampleSpec.of(cfg)
    if (target == "delta") != (delta is not None):
        raise ValueError(f"trainer.target is {target!r}: a delta scale is needed with delta targets, and only then")
    return {
        "model": cfg.trainer.model,
        "model_args": dict(cfg.trainer.model_args),
        "in_dim": cfg.problem.n_inputs,
        "out_shape": list(cfg.problem.sample_shape),
        "sample": cfg.trainer.sample,
        "sample_stride": spec.stride,
        "history": spec.history,
        "bundle": spec.bundle,
        "fields": list(cfg.problem.field_names),
        "x_low": list(norm.x_low),
        "x_high": list(norm.x_high),
        "y_low": list(norm.y_low),
        "y_high": list(norm.y_high),
        "target": target,
        **({"delta_scale": [float(v) for v in delta]} if delta is not None else {}),
    }


def build_surrogate(args: Mapping[str, Any]) -> Surrogate:
    """The model of :func:`surrogate_args` (a checkpoint written before sample kinds: direct; before
    delta targets: state)."""
    spec = SampleSpec.make(args.get("sample", "direct"), args.get("sample_stride", 0),
                           n_fields=int(args["out_shape"][0]), history=int(args.get("history", 1)),
                           bundle=int(args.get("bundle", 1)))
    model_args = dict(args["model_args"])
    if "in_fields" in model_args:
        raise ValueError(
            "trainer.model_args must not set in_fields: trainer.sample decides it (autoregressive: every field)"
        )
    if spec.in_fields:
        model_args["in_fields"] = spec.in_fields
    target = args.get("target", "state")
    if target not in TARGETS:
        raise ValueError(f"trainer.target must be one of {TARGETS}, got {target!r}")
    delta = args["delta_scale"] if target == "delta" else None
    n_fields, *grid = args["out_shape"]
    # Temporal bundling: the network predicts K steps, K x n_fields channels.
    network = build_network(args["model"], in_dim=args["in_dim"], out_shape=(spec.out_fields, *grid), **model_args)
    return Surrogate(
        network=network, x_low=args["x_low"], x_high=args["x_high"], y_low=args["y_low"], y_high=args["y_high"],
        in_fields=spec.in_fields, stride=spec.stride, history=spec.history, bundle=spec.bundle, delta_scale=delta,
    )


def make_optimizer(model: Surrogate, cfg: StudyConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam and a step schedule that multiplies the lr by ``lr_gamma`` at each milestone batch."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=list(cfg.trainer.lr_milestones), gamma=cfg.trainer.lr_gamma
    )
    return opt, sched


class MixedPrecision:
    """``trainer.precision``: the train step's forward pass under autocast, or not.

    fp32: no autocast. bf16: autocast to bfloat16 (CPU or CUDA; bf16 keeps fp32's exponent range,
    so no loss scaling). fp16: autocast to float16 with a gradient scaler (CUDA only). The loss is
    always computed in fp32, and validation and evaluation run in fp32, so that losses compare
    across precisions. The FNO's Fourier transforms run in fp32 whatever the precision.
    """

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name: str, device: torch.device):
        if name not in self.DTYPES:
            raise ValueError(f"trainer.precision must be one of {sorted(self.DTYPES)}, got {name!r}")
        if name == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"key 'trainer.precision': fp16 needs a CUDA device (the trainer runs on {device}); use bf16 or fp32"
            )
        self.name, self.device_type, self.dtype = name, device.type, self.DTYPES[name]
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def unroll_now(batch: int, *, unroll: int, warmup: int) -> int:
    """``trainer.unroll_warmup``: the applications batch ``batch`` (0-based) trains, growing evenly
    from 1 at the first batch to ``unroll`` after ``warmup`` batches (always ``unroll`` for 0)."""
    if warmup <= 0 or unroll <= 1:
        return unroll
    return min(unroll, 1 + (batch * unroll) // warmup)


def train_step(
    model: Surrogate,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sync_gradients=None,
    precision: MixedPrecision | None = None,
    input_noise: float = 0.0,
    generator: torch.Generator | None = None,
    unroll: int | None = None,
    pushforward: bool = True,
) -> torch.Tensor:
    """One optimisation step on a batch; x [B, in_dim], y [B, n_fields, ny, nx] raw (on the model's
    device); for autoregressive samples windows: x [B, n_params + n] (the parameters, then the time
    of each application's last input step), y [B, (h + n K) x n_fields, ny, nx], the h input steps
    then the n K steps the applications predict (:mod:`datamove.problems.samples`).

    ``unroll``: the applications trained (at most the n of the windows; None: all n, see
    :func:`unroll_now` for the curriculum). The model is applied to its own outputs: application j
    takes the last h steps of the input and the predictions so far. ``pushforward`` (with more than
    one application): the earlier applications run without gradients and the loss is the last
    one's (Brandstetter et al. 2022); without it the gradient flows through every application and
    the loss is their mean.

    ``sync_gradients(model)``, under data-parallel training, averages the gradients across ranks
    between backward and the optimizer step. ``precision``: autocast and loss scaling
    (``trainer.precision``, :class:`MixedPrecision`); None is fp32. ``input_noise``
    (``trainer.input_noise``, autoregressive samples): the standard deviation, on the normalised
    scale, of Gaussian noise added to the true input steps, drawn from ``generator`` (on the model's
    device); the targets stay the true steps, so the network learns to undo errors in its input
    (with delta targets: the change is from the noisy input). Only here: validation and evaluation
    never see noise.

    The loss minimised is the MSE of the network's output (:meth:`Surrogate.network_target`: the
    normalised states, or the changes on the delta scale). Returns the MSE on the normalised state
    scale of the applications in the loss, as :func:`evaluate` gives it for one application (the
    same number with state targets), as a 0-d tensor left on the device: calling ``.item()`` here
    would be a CPU-GPU sync point on every batch.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    fields, targets = model.split(y)  # autoregressive samples carry their input steps in y
    if input_noise > 0 and fields is not None:
        noise = torch.randn(fields.shape, generator=generator, device=fields.device, dtype=fields.dtype)
        fields = fields + noise * (input_noise * model._tile(model.y_span, fields.shape[1]))  # normalised -> raw
    if fields is None:
        n_apply = 1
    else:
        n_windows = targets.shape[1] // model.out_fields
        n_apply = n_windows if unroll is None else unroll
        if not 1 <= n_apply <= n_windows:
            raise ValueError(f"unroll {n_apply}: the samples' windows hold {n_windows} application(s)")
    weight = model.state_weight()
    losses, reported = [], []
    for j in range(n_apply):
        last = j == n_apply - 1
        with_grad = last or not pushforward
        target = targets if fields is None else targets[:, j * model.out_fields : (j + 1) * model.out_fields]
        xj = model.application_x(x, j) if fields is not None else x
        with torch.set_grad_enabled(with_grad):
            with contextlib.nullcontext() if precision is None else precision.autocast():
                out = model.network_output(xj, fields)
            if with_grad:
                want = model.network_target(fields, target)
                losses.append(F.mse_loss(out.float(), want))
                with torch.no_grad():
                    reported.append(losses[-1].detach() if weight is None
                                    else ((out.detach().float() - want).square() * weight).mean())
            if not last:  # the next application's input: the last h steps, predictions included
                pred = model.from_network_output(out.float(), fields)
                fields = model.next_fields(fields, pred.detach() if pushforward else pred)
    loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
    reported = reported[0] if len(reported) == 1 else torch.stack(reported).mean()
    scaler = None if precision is None else precision.scaler
    if scaler is None:
        loss.backward()
        if sync_gradients is not None:
            sync_gradients(model)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        if sync_gradients is not None:
            # Scaled gradients are averaged: an overflow on one rank reaches every rank, and all
            # of them skip that step together (the scaler finds the inf in the averaged grads).
            sync_gradients(model)
        scaler.step(optimizer)
        scaler.update()
    return reported


@torch.no_grad()
def evaluate(model: Surrogate, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Normalised MSE over a whole set of stored samples; x [N, in_dim], y [N, n_fields, ny, nx] raw
    (autoregressive: windows [N, L x n_fields, ny, nx], the MSE of the first application: the
    steps predicted from the true history)."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        err = model.sample_error(xb, yb)
        total += float(err.sum())
        n += err.numel()
    return total / max(n, 1)


def save_checkpoint(
    path: str | Path,
    *,
    model: Surrogate,
    optimizer: torch.optim.Optimizer,
    model_args: Mapping[str, Any],
    config: Mapping[str, Any],
    step: int,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """A self-describing checkpoint: a resumed run or an evaluation rebuilds the model from it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": dict(model_args),
        "config": dict(config),
        "step": step,
        **(extra or {}),
    }
    try:
        # A file object, not a path: torch then fails with the OS error (no space, file too large)
        # as the context of its own, which says only "unexpected pos".
        with tmp.open("wb") as fh:
            torch.save(state, fh)
        tmp.replace(path)  # never leave a half-written checkpoint behind
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from exc


class WriteError(OSError):
    """A file of the study could not be written; the message names it and the OS's reason."""

    def __init__(self, path: Path, exc: BaseException):
        cause = exc
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__context__ or cause.__cause__
        errno_ = cause.errno if cause is not None else None
        reason = os.strerror(errno_) if errno_ else str(exc)
        if errno_ == ENOSPC:
            reason = f"no space left on device ({shutil.disk_usage(path.parent).free} bytes free)"
        elif errno_ == EFBIG:
            reason = "file too large (a file-size limit, see ulimit -f, or the file system's)"
        super().__init__(errno_, f"cannot write {path}: {reason}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


class ModelFileError(ValueError):
    """A model file that cannot be loaded (missing, truncated, not a DATAMOVE checkpoint); names the file."""


def load_surrogate(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Surrogate, dict]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ModelFileError: naming ``path`` and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        raise ModelFileError(f"model file {path} cannot be read (truncated or not a torch file?): {exc}") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args"} <= set(ckpt):
        raise ModelFileError(f"model file {path} is not a DATAMOVE checkpoint (no model and model_args in it)")
    try:
        model = build_surrogate(ckpt["model_args"]).to(device)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"model file {path} does not rebuild its model: {exc}") from None
    model.eval()
    return model, ckpt
