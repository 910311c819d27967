"""scripts/train_micro.py: a run split over sittings (stopped by --max-minutes, resumed by the same command)
ends with exactly the weights of one uninterrupted run; --export-checkpoint writes a model still in training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_micro.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_micro", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()

    def run(*argv: str) -> int:
        try:
            return module.main(["--tiny", "--steps", "3", "--batch", "2", "--warmup", "1", "--log-every", "1",
                                "--threads", "1", *argv])
        finally:
            torch.set_num_threads(threads)

    return run


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")


def test_sittings_resume_to_the_uninterrupted_result(train, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train("--out", str(whole)) == 0

    # --max-minutes 0 ends each sitting after one step, with a checkpoint; the same command resumes
    assert train("--out", str(split), "--max-minutes", "0") == 0
    assert not split.exists() and (tmp_path / "split.ckpt" / "checkpoint.pt").is_file()

    # a model still in training can be written out from its checkpoint, without training
    exported = tmp_path / "exported"
    assert train("--out", str(exported), "--ckpt-dir", str(tmp_path / "split.ckpt"), "--export-checkpoint") == 0
    info = json.loads((exported / "training.json").read_text())
    assert info["in_progress"] is True and info["steps"] == 1 and len(info["sittings"]) == 1

    assert train("--out", str(split), "--max-minutes", "0") == 0
    assert train("--out", str(split)) == 0
    info = json.loads((split / "training.json").read_text())
    assert info["in_progress"] is False and info["steps"] == 3
    assert [s["end_step"] for s in info["sittings"]] == [1, 2, 3]

    a, b = weights(whole), weights(split)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(weights(exported)[next(iter(a))], a[next(iter(a))])


def test_other_options_do_not_resume_a_checkpoint(train, tmp_path):
    out = tmp_path / "m"
    assert train("--out", str(out), "--max-minutes", "0") == 0
    with pytest.raises(SystemExit, match="other training options.*--lr"):
        train("--out", str(out), "--lr", "1e-3")


def test_export_without_a_checkpoint_names_the_fix(train, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint.*run the training command first"):
        train("--out", str(tmp_path / "m"), "--export-checkpoint")
