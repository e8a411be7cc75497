"""The one place that reads, checks and writes checkpoints.

A training checkpoint (``best.ckpt``, ``last.ckpt``, written by ``seq2seq.train``) is a Lightning
checkpoint with three keys of ours beside Lightning's: ``model_config`` (the
:class:`~seq2seq.models.transformer.TransformerConfig` fields), ``tokenizer`` (the sentencepiece
models as bytes) and the ``net.*`` weights in ``state_dict``. That alone rebuilds the model, so every
command, notebook and callback goes through :func:`read_checkpoint` and :func:`load_model`:

* files are read with ``torch.load(weights_only=True)``: an untrusted file cannot run code, and
  Lightning is not imported, so ``translate`` starts fast;
* every problem ends in one :class:`~seq2seq.errors.CheckpointError` line naming the file and what
  to do (missing, a folder, damaged or truncated, not ours, weights only when resuming, another
  model than the run configures).

Several checkpoints that share a tokenizer decode as an ensemble (:func:`load_models`, which
checks that they do). Averaging (:func:`average_checkpoints`) and atomic writing
(:func:`save_checkpoint`) live here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.ensemble import Ensemble, config_difference
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig
from seq2seq.utils.io import atomic_path

# Training state that belongs to one run only: an average or a weights-only export cannot resume.
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "loops", "native_amp_scaling_state")
# TransformerConfig fields that decide the parameters' shapes (dropout does not).
ARCHITECTURE_KEYS = ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "d_ff", "max_positions",
                     "pre_norm", "tie_output", "activation", "copy_attention")


def one_line(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception message: torch's messages run on, a user error is one line."""
    text = str(err).strip().splitlines()
    first = text[0].split(". ")[0] if text else ""
    first = first if len(first) <= limit else first[: limit - 3] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda`` and ``cuda:N`` as given."""
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r} is not a device: use cpu, cuda, cuda:N or auto") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available here; use device=cpu or auto")
    return device


def read_checkpoint(path: str | Path | None, *, resumable: bool = False) -> dict[str, Any]:
    """A seq2seq training checkpoint's content, on the CPU, checked; see the module docstring.

    ``resumable``: it must also hold the optimizer and loop state (to continue training).
    Tensors are memory-mapped: listing steps or averaging big models reads only what is used.
    """
    if path is None or str(path).strip() == "":
        raise CheckpointError("no checkpoint given: pass ckpt_path=PATH (a .ckpt file written by seq2seq-train)")
    if not isinstance(path, (str, Path)):  # a Hydra list where one file is read (load_models takes lists)
        raise CheckpointError(f"ckpt_path={list(path)} names several checkpoints; give one checkpoint here")
    path = Path(path)
    if not path.exists():
        several = ":" in str(path) and all(Path(p).is_file() for p in str(path).split(":"))
        hint = " (several checkpoints, an ensemble, are a list: 'ckpt_path=[A,B]')" if several else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({one_line(err)}); it may be truncated, or is not a PyTorch "
            "checkpoint at all. Use another checkpoint of the run (best.ckpt, last.ckpt)"
        ) from None
    missing = [k for k in ("state_dict", "model_config", "tokenizer") if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        no_tokenizer = "holds no tokenizer: it " if "tokenizer" in missing else ""
        raise CheckpointError(
            f"{path} {no_tokenizer}is not a seq2seq training checkpoint (it lacks {', '.join(missing)}); "
            "use best.ckpt or last.ckpt from a run's checkpoints/ folder"
        )
    if resumable and not all(k in checkpoint for k in ("optimizer_states", "loops")):
        raise CheckpointError(
            f"{path} holds model weights only (no optimizer or loop state), so training cannot resume from it; "
            "use the run's last.ckpt"
        )
    return checkpoint


def check_architecture(path: str | Path, checkpoint: Mapping, model: Mapping) -> None:
    """Raise unless the checkpoint's network has the shapes the ``model`` config asks for."""
    saved = checkpoint["model_config"]
    wanted = {k: model[k] for k in ARCHITECTURE_KEYS if k in model and k in saved}
    if "share_embeddings" in model and "share_embeddings" in saved:
        joint = checkpoint["tokenizer"].get("tgt_model") is None
        wanted["share_embeddings"] = bool(model["share_embeddings"]) and joint
    differ = [k for k, v in wanted.items() if saved[k] != v]
    if differ:
        theirs = ", ".join(f"{k}={saved[k]}" for k in differ)
        ours = ", ".join(f"{k}={wanted[k]}" for k in differ)
        raise CheckpointError(
            f"{path} holds a different model ({theirs}) than this run configures ({ours}); "
            "resume with the model settings it was trained with (the same model/size and model.* overrides)"
        )


def network_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``net.*`` entries of a LightningModule state dict, without the prefix."""
    return {k[len("net.") :]: v for k, v in state_dict.items() if k.startswith("net.")}


def model_config(checkpoint: Mapping) -> TransformerConfig:
    """The network's config a checkpoint holds (fields a later version dropped are ignored)."""
    fields = TransformerConfig.__dataclass_fields__
    return TransformerConfig(**{k: v for k, v in checkpoint["model_config"].items() if k in fields})


def build_model(checkpoint: Mapping, path: str | Path = "checkpoint") -> tuple[Seq2SeqTransformer, Tokenizer]:
    """The network (eval mode, CPU) and tokenizer a checked checkpoint holds."""
    try:
        net = Seq2SeqTransformer(model_config(checkpoint))
        net.load_state_dict(network_weights(checkpoint["state_dict"]))
        tokenizer = Tokenizer.from_state_dict(checkpoint["tokenizer"])
    except Exception as err:  # noqa: BLE001 - any failure here means the file does not fit
        raise CheckpointError(f"{path} does not hold a usable model ({one_line(err)})") from None
    return net.eval(), tokenizer


def load_model(path: str | Path | None, device: torch.device | str = "cpu") -> tuple[Seq2SeqTransformer, Tokenizer]:
    """Read, check and build: the network (eval mode, on ``device``) and tokenizer of a checkpoint."""
    net, tokenizer = build_model(read_checkpoint(path), path)
    return net.to(device), tokenizer


def checkpoint_paths(value: str | Path | Sequence[str | Path] | None) -> list[str | Path | None]:
    """``ckpt_path`` as a list: one path (or None, which :func:`read_checkpoint` refuses) or a list of
    paths (a Hydra list on the command line, ``'ckpt_path=[a.ckpt,b.ckpt]'``)."""
    if value is None or isinstance(value, (str, Path)):
        return [value]
    paths = list(value)
    if not paths:
        raise CheckpointError("ckpt_path=[] names no checkpoint: pass ckpt_path=PATH or ckpt_path='[A,B]'")
    return paths


def load_models(
    paths: str | Path | Sequence[str | Path] | None, device: torch.device | str = "cpu"
) -> tuple[Seq2SeqTransformer | Ensemble, Tokenizer]:
    """One checkpoint: as :func:`load_model`. Several: their :class:`~seq2seq.decoding.ensemble.Ensemble`
    (eval mode, on ``device``) and their tokenizer, which must be the same in all of them.

    Raises :class:`~seq2seq.errors.ConfigError`, naming the first checkpoint, the one that differs
    and how (vocabulary size, special ids, a piece, the sentencepiece model files), when the
    tokenizers or the models' vocabularies differ; the models may differ in everything else.
    """
    paths = checkpoint_paths(paths)
    if len(paths) == 1:
        return load_model(paths[0], device)
    nets, first = [], None
    for path in paths:
        net, tokenizer = build_model(read_checkpoint(path), path)
        if first is None:
            first = tokenizer
        elif differ := first.difference(tokenizer) or config_difference(nets[0].config, net.config):
            raise ConfigError(
                f"checkpoints {paths[0]} and {path} have different tokenizers ({differ}); "
                "an ensemble needs models trained with the same tokenizer"
            )
        nets.append(net)
    return Ensemble(nets).eval().to(device), first


def save_checkpoint(checkpoint: Mapping[str, Any], output: str | Path) -> Path:
    """``torch.save`` to ``output`` atomically (never a half-written file under that name)."""
    output = Path(output)
    with atomic_path(output) as tmp:
        torch.save(dict(checkpoint), tmp)
    return output


def last_checkpoints(folder: str | Path, n: int | None = None) -> list[Path]:
    """The ``*.ckpt`` files of ``folder``, oldest first by training step, one per step; the last ``n``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    by_step: dict[int, Path] = {}
    for path in sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name)):
        step = int(read_checkpoint(path).get("global_step", -1))
        # The same weights saved twice (last.ckpt beside an epoch checkpoint): keep the named one.
        if step not in by_step or by_step[step].name.startswith("last"):
            by_step[step] = path
    paths = [by_step[step] for step in sorted(by_step)]
    if not paths:
        raise CheckpointError(f"no *.ckpt files in {folder}")
    return paths[-n:] if n else paths


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """A checkpoint whose floating-point weights are the element-wise mean of those of ``paths``.

    Summed in float64 and stored in each tensor's dtype; non-float tensors, the tokenizer, the model
    config and the hyperparameters come from the last input, so it translates like any checkpoint.
    Training state is dropped (it cannot resume). Inputs with other keys or shapes are refused.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("no checkpoints to average: give inputs=[...] or dir=DIR")
    sums: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    newest: dict[str, Any] = {}
    for i, path in enumerate(paths):
        newest = read_checkpoint(path)
        state = newest["state_dict"]
        if i == 0:
            reference = dict(state)
        elif set(state) != set(reference):
            diff = sorted(set(state) ^ set(reference))
            raise CheckpointError(
                f"{path} does not match {paths[0]}: different weights ({', '.join(diff[:5])}...); "
                "average checkpoints of one model only"
            )
        for name, tensor in state.items():
            if tensor.shape != reference[name].shape:
                raise CheckpointError(
                    f"{path} does not match {paths[0]}: {name} has shape {tuple(tensor.shape)}, "
                    f"not {tuple(reference[name].shape)}"
                )
            if tensor.is_floating_point():
                sums[name] = sums[name] + tensor.double() if name in sums else tensor.double()

    state = dict(newest["state_dict"])
    shared: dict[tuple, torch.Tensor] = {}
    for name, total in sums.items():
        # Tied weights (shared embeddings) are one storage under several names: keep them one tensor.
        tensor = newest["state_dict"][name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key not in shared:
            shared[key] = (total / len(paths)).to(reference[name].dtype)
        state[name] = shared[key]
    averaged = {k: v for k, v in newest.items() if k not in TRAINING_STATE_KEYS}
    averaged["state_dict"] = state
    averaged["averaged_from"] = [str(p) for p in paths]
    return averaged
