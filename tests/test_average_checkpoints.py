"""seq2seq.average_checkpoints: element-wise mean of weights, a checkpoint that still loads and translates."""

import shutil
from pathlib import Path

import pytest
import torch

from seq2seq.average_checkpoints import main
from seq2seq.decoding.search import greedy_search
from seq2seq.errors import CheckpointError
from seq2seq.inference.checkpoint import average_checkpoints, last_checkpoints
from seq2seq.models.lit_module import Seq2SeqModule


@pytest.fixture(scope="module")
def two_checkpoints(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny run's best checkpoint and a copy with perturbed weights, saved at a later step."""
    folder = tmp_path_factory.mktemp("avg")
    a = folder / "a.ckpt"
    shutil.copy(tiny_checkpoint, a)
    checkpoint = torch.load(a, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for tensor in checkpoint["state_dict"].values():
        # In place, once per storage: tied weights (shared embeddings) stay tied, as in training.
        if tensor.is_floating_point() and tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
    checkpoint["global_step"] = int(checkpoint["global_step"]) + 10
    b = folder / "b.ckpt"
    torch.save(checkpoint, b)
    return a, b


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_average_is_the_elementwise_mean(two_checkpoints):
    a, b = two_checkpoints
    averaged = average_checkpoints([a, b])
    sa, sb = _state(a), _state(b)
    assert set(averaged["state_dict"]) == set(sa)
    floats = 0
    for name, tensor in averaged["state_dict"].items():
        assert tensor.dtype == sa[name].dtype and tensor.shape == sa[name].shape
        if tensor.is_floating_point():
            floats += 1
            torch.testing.assert_close(tensor, (sa[name].double() + sb[name].double()).div(2).float(), rtol=0, atol=0)
            assert not torch.equal(tensor, sa[name])
        else:
            assert torch.equal(tensor, sb[name])
    assert floats > 5
    newest = torch.load(b, map_location="cpu", weights_only=True)
    assert averaged["tokenizer"] == newest["tokenizer"] and averaged["model_config"] == newest["model_config"]
    assert averaged["global_step"] == newest["global_step"]
    assert averaged["averaged_from"] == [str(a), str(b)]
    assert "optimizer_states" not in averaged and "lr_schedulers" not in averaged


def test_averaged_checkpoint_loads_and_translates(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    output = tmp_path / "avg.ckpt"
    assert main([f"inputs=[{a},{b}]", f"output={output}"]) == 0
    module = Seq2SeqModule.load_from_checkpoint(output, map_location="cpu").eval()
    src = torch.tensor(module.tokenizer.encode_source(["The old man saw a dog."]))
    hyps = greedy_search(module.net, src)
    assert len(hyps) == 1 and isinstance(module.tokenizer.decode_target(hyps)[0], str)
    expected = average_checkpoints([a, b])["state_dict"]
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_argparse_form_and_last_n_of_a_folder(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    folder = tmp_path / "epochs"
    folder.mkdir()
    for path in (a, b):
        shutil.copy(path, folder / path.name)
    shutil.copy(b, folder / "last.ckpt")  # the same step as b.ckpt: counted once
    (folder / "notes.txt").write_text("not a checkpoint")
    assert [p.name for p in last_checkpoints(folder)] == ["a.ckpt", "b.ckpt"]
    assert [p.name for p in last_checkpoints(folder, 1)] == ["b.ckpt"]

    out_flags, out_dir = tmp_path / "flags.ckpt", tmp_path / "dir.ckpt"
    assert main(["--inputs", str(a), str(b), "--output", str(out_flags)]) == 0
    assert main(["--dir", str(folder), "--last", "2", "--output", str(out_dir)]) == 0
    for name, tensor in _state(out_flags).items():
        assert torch.equal(tensor, _state(out_dir)[name])
    # last=1 of explicit inputs keeps the final one: its weights unchanged.
    assert main([f"inputs=[{a},{b}]", "last=1", f"output={tmp_path / 'one.ckpt'}"]) == 0
    for name, tensor in _state(tmp_path / "one.ckpt").items():
        assert torch.equal(tensor, _state(b)[name])


def test_mismatched_checkpoints_are_refused(two_checkpoints, tmp_path, capsys):
    a, _ = two_checkpoints
    checkpoint = torch.load(a, map_location="cpu", weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.dim() == 2)
    checkpoint["state_dict"][name] = torch.zeros(3, 3)
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(CheckpointError, match="shape"):
        average_checkpoints([a, other])
    assert main(["--inputs", str(a), str(other), "--output", str(tmp_path / "x.ckpt")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--inputs", "{garbage}", "--output", "{out}"], "is not a PyTorch checkpoint"),
        (["--inputs", "{missing}", "--output", "{out}"], "does not exist"),
        (["--inputs", "{garbage}"], "output=PATH"),
        (["output={out}"], "either inputs"),
        (["inputs=[{garbage}]", "output={out}", "color=red"], "unknown option"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint\n")
    paths = {"garbage": garbage, "missing": tmp_path / "missing.ckpt", "out": tmp_path / "out.ckpt"}
    assert main([arg.format(**paths) for arg in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.ckpt").exists()
