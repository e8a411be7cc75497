"""The one place that reads, checks and writes checkpoints.

A training checkpoint (``best.ckpt``, ``last.ckpt``) is a Lightning checkpoint with three keys of
ours: ``model_config`` (the :class:`~seq2seq.models.transformer.TransformerConfig` fields),
``tokenizer`` (the sentencepiece models as bytes) and the ``net.*`` weights in ``state_dict``, which
alone rebuild the model. :func:`read_checkpoint` reads with ``torch.load(weights_only=True)`` (an
untrusted file cannot run code, and Lightning is not imported, so ``translate`` starts fast), and
every problem ends in one :class:`~seq2seq.errors.CheckpointError` line naming the file and what to
do. Ensembles (:func:`load_models`), averaging, atomic writing and the parent of a fine-tuning run
(:func:`load_parent`) live here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.ensemble import Ensemble, config_difference
from seq2seq.errors import CheckpointError, ConfigError, one_line
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig
from seq2seq.utils.io import atomic_open_binary

# Training state that belongs to one run only: an average or a weights-only export cannot resume.
# (``current_model_state``/``averaging_state``: the raw weights and counters beside EMA weights, see
# seq2seq.callbacks.ema.)
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "loops", "native_amp_scaling_state",
                       "current_model_state", "averaging_state")
# TransformerConfig fields a fine-tuning run takes from its own model config; every other is the parent's.
FINETUNE_KEYS = ("dropout", "attention_dropout")
# The fields that decide the network (a new model variant's field included): all but those, and the
# vocabulary, its special ids and whether embeddings are shared (all of which come with the tokenizer).
ARCHITECTURE_KEYS = tuple(f.name for f in fields(TransformerConfig) if f.name not in (
    *FINETUNE_KEYS, "src_vocab_size", "tgt_vocab_size", "share_embeddings", "pad_id", "bos_id", "eos_id"))


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
    """A seq2seq training checkpoint's content, on the CPU, checked (tensors memory-mapped: listing
    steps or averaging reads only what is used). ``resumable``: it must hold the optimizer and loop state."""
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


def architecture_difference(checkpoint: Mapping, model: Mapping) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint's value, config's value)`` for each shape-deciding key the ``model`` config
    sets otherwise than the checkpoint's network has it (empty when they agree)."""
    saved = checkpoint["model_config"]
    wanted = {k: model[k] for k in ARCHITECTURE_KEYS if k in model and k in saved}
    if "share_embeddings" in model and "share_embeddings" in saved:
        # One vocabulary: a joint tokenizer, or (a Marian import) two segmenters over the same pieces.
        joint = checkpoint["tokenizer"].get("tgt_model") is None or saved["share_embeddings"]
        wanted["share_embeddings"] = bool(model["share_embeddings"]) and joint
    return [(k, saved[k], v) for k, v in wanted.items() if saved[k] != v]


def check_architecture(path: str | Path, checkpoint: Mapping, model: Mapping) -> None:
    """Raise unless the checkpoint's network has the shapes the ``model`` config asks for."""
    differ = architecture_difference(checkpoint, model)
    if differ:
        theirs = ", ".join(f"{k}={saved}" for k, saved, _ in differ)
        ours = ", ".join(f"{k}={wanted}" for k, _, wanted in differ)
        raise CheckpointError(
            f"{path} holds a different model ({theirs}) than this run configures ({ours}); "
            "resume with the model settings it was trained with (the same model/size and model.* overrides)"
        )


def network_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``net.*`` entries of a LightningModule state dict, without the prefix."""
    return {k[len("net.") :]: v for k, v in state_dict.items() if k.startswith("net.")}


def model_config(checkpoint: Mapping) -> TransformerConfig:
    """The network's config a checkpoint holds (fields a later version dropped are ignored)."""
    known = TransformerConfig.__dataclass_fields__
    return TransformerConfig(**{k: v for k, v in checkpoint["model_config"].items() if k in known})


def build_model(
    checkpoint: Mapping, path: str | Path = "checkpoint", config: TransformerConfig | None = None
) -> tuple[Seq2SeqTransformer, Tokenizer]:
    """The network (eval mode, CPU) and tokenizer a checked checkpoint holds (built with ``config``,
    by default the checkpoint's own; it must give the same shapes)."""
    try:
        net = Seq2SeqTransformer(config or model_config(checkpoint))
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
    (eval mode, on ``device``) and their tokenizer; one :class:`~seq2seq.errors.ConfigError` names
    the checkpoint whose tokenizer or vocabulary differs from the first's, and how."""
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
    with atomic_open_binary(output) as f:
        torch.save(dict(checkpoint), f)
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
    """A checkpoint whose floating-point weights are the element-wise mean of those of ``paths``
    (summed in float64, stored in each tensor's dtype); everything else comes from the last input,
    but the training state (it cannot resume). Inputs with other keys or shapes are refused."""
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


@dataclass
class Parent:
    """What a fine-tuning run starts from (``init_from``): the parent's network and tokenizer."""

    path: Path
    net: Seq2SeqTransformer
    tokenizer: Tokenizer
    global_step: int
    best_scores: dict[str, float]

    def record(self) -> dict[str, Any]:
        """The parent as the child's ``metrics.json`` records it (``init_from``): its path, step and best
        scores, and the numbers of its run's ``metrics.json`` when the checkpoint sits in a run folder
        (``<run>/checkpoints/*.ckpt``; None otherwise)."""
        run_metrics = None
        summary = self.path.parent.parent / "metrics.json"
        if self.path.parent.name == "checkpoints" and summary.is_file():
            try:
                content = json.loads(summary.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                content = {}
            run_metrics = {k: v for k, v in content.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {"path": str(self.path.resolve()), "global_step": self.global_step, "best_scores": self.best_scores,
                "run_metrics": run_metrics}


def load_parent(path: str | Path | None, model: Mapping, data: Mapping | None = None) -> Parent:
    """Read ``path``, a training checkpoint or a Hugging Face transformers Marian folder
    (:mod:`seq2seq.inference.hf_import`), as the start of a fine-tuning run, in eval mode.

    The architecture and vocabulary are the parent's: every shape-deciding key of the run's ``model``
    config and ``data.joint_vocab`` (``data``: the data config) must equal the parent's, or one
    :class:`CheckpointError` names each that differs and the value to use; only
    :data:`FINETUNE_KEYS` (dropout) come from ``model``. No sentencepiece model is trained
    (``data.vocab_size``/``spm_model_type`` are not used).
    """
    if isinstance(path, (str, Path)):
        path = Path(path).expanduser()
    if isinstance(path, Path) and path.is_dir():
        from seq2seq.inference.hf_import import read_transformers_folder  # transformers only then

        checkpoint = read_transformers_folder(path)
    else:
        checkpoint = read_checkpoint(path)
    differ = [(f"model.{k}", theirs, ours) for k, theirs, ours in architecture_difference(checkpoint, model)]
    joint = checkpoint["tokenizer"].get("tgt_model") is None
    if data is not None and data.get("joint_vocab") is not None and bool(data["joint_vocab"]) != joint:
        differ.append(("data.joint_vocab", joint, bool(data["joint_vocab"])))
    if differ:
        keys = ", ".join(f"{k} (parent {theirs}, this run {ours})" for k, theirs, ours in differ)
        fix = " ".join(f"{k}={str(theirs).lower() if isinstance(theirs, bool) else theirs}" for k, theirs, _ in differ)
        raise CheckpointError(
            f"init_from={path}: the parent model differs from this run's config in {keys}. Fine-tuning keeps "
            f"the parent's architecture and tokenizer: set {fix} (or leave init_from out to train from scratch)"
        )
    config = replace(model_config(checkpoint), **{k: model[k] for k in FINETUNE_KEYS if k in model})
    net, tokenizer = build_model(checkpoint, path, config)
    best = {k: float(v) for k, v in (checkpoint.get("best_scores") or {}).items()}
    return Parent(path, net, tokenizer, int(checkpoint.get("global_step", 0)), best)


def fine_tuned_tokenizer(checkpoint: Mapping) -> Tokenizer | None:
    """The tokenizer of a fine-tuning run's checkpoint (its parent's: resuming that run tokenizes the
    corpus with it), or None for a run that trained its own on its corpus."""
    if not (checkpoint.get("hyper_parameters") or {}).get("init_from"):
        return None
    return Tokenizer.from_state_dict(checkpoint["tokenizer"])
