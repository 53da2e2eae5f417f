"""Synthetic checkpoints (``moonpipe checkpoint make``) and the safetensors loader's errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moonpipe.cli import main
from moonpipe.config import ModelConfig
from moonpipe.errors import CheckpointError
from moonpipe.model.checkpoint import ensure_checkpoint, make_checkpoint, preset_config
from moonpipe.model.init import PRESET_EOS_BIAS
from moonpipe.model.weights import build_random_model, canonical_key, load_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny", seed=1)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tiny_checkpoint_loads_with_golden_shapes(tiny_dir: Path) -> None:
    cfg = ModelConfig.from_dir(tiny_dir)
    assert cfg == preset_config("tiny")
    assert (cfg.text.dim, cfg.text.n_layers, cfg.text.vocab_size) == (128, 2, 32768)
    assert (cfg.vision.enc_dim, cfg.vision.enc_n_layers, cfg.vision.max_crops, cfg.region.inner_dim) == (48, 27, 6, 64)
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    assert all(k.startswith("model.") for k in tensors)
    assert tensors["model.text.wte"].shape == (32768, 128) and tensors["model.text.wte"].dtype == torch.float16
    model = load_model(tiny_dir, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    data = json.loads((tiny_dir / "config.json").read_text())
    assert {"text", "vision", "region", "tokenizer"} <= set(data)


def test_checkpoint_equals_build_random_model(tiny_dir: Path) -> None:
    loaded = load_model(tiny_dir, dtype=torch.float16)
    built = build_random_model(preset_config("tiny"), seed=1, dtype=torch.float16, eos_bias=PRESET_EOS_BIAS["tiny"])
    for (name, a), (_, b) in zip(loaded.state_dict().items(), built.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    other = build_random_model(preset_config("tiny"), seed=2, dtype=torch.float16)
    assert not torch.equal(other.text.wte, built.text.wte)
    unbiased = build_random_model(preset_config("tiny"), seed=1, dtype=torch.float16)
    delta = (built.text.lm_head.bias - unbiased.text.lm_head.bias).float()
    assert delta[0] == pytest.approx(PRESET_EOS_BIAS["tiny"], abs=0.01) and not delta[1:].any()


def test_make_is_deterministic_and_refuses_to_overwrite(tiny_dir: Path, tmp_path: Path) -> None:
    again = make_checkpoint(tmp_path / "again", preset="tiny", seed=1)
    assert (again / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    with pytest.raises(CheckpointError, match="--force"):
        make_checkpoint(again, preset="tiny", seed=1)


def test_cli_make_and_ensure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["checkpoint", "make", "--preset", "tiny", "--seed", "3", "--dtype", "bfloat16", str(out)]) == 0
    assert load_file(str(out / "model.safetensors"))["model.text.wte"].dtype == torch.bfloat16
    assert main(["checkpoint", "make", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    (out / "tokenizer.json").unlink()
    assert ensure_checkpoint(out) == out and (out / "tokenizer.json").is_file()


def test_synthetic_activations_stay_order_one(tiny_dir: Path) -> None:
    model = load_model(tiny_dir)
    pixels = torch.rand(2, 3, 378, 378) * 2 - 1
    with torch.inference_mode():
        emb = model.encode_image(pixels, (1, 1))
        logits = model.lm_logits(emb)
    assert emb.shape == (729, 128) and 0.1 < emb.std() < 10
    assert torch.isfinite(logits).all() and logits.abs().max() < 50


# ---------------------------------------------------------------- loader errors


def test_missing_file(tmp_path: Path) -> None:
    shutil.copy(Path(__file__), tmp_path / "unrelated.py")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(tmp_path)


def _rewrite(src: Path, dst: Path, edit: object) -> Path:
    d = _copy(src, dst)
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)  # type: ignore[operator]
    save_file(tensors, str(d / "model.safetensors"))
    return d


def test_missing_key(tiny_dir: Path, tmp_path: Path) -> None:
    d = _rewrite(tiny_dir, tmp_path / "m", lambda t: t.pop("model.text.blocks.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.text\.blocks\.1\.mlp\.fc2\.bias'"):
        load_model(d)


def test_unexpected_key(tiny_dir: Path, tmp_path: Path) -> None:
    d = _rewrite(tiny_dir, tmp_path / "u", lambda t: t.__setitem__("model.text.extra", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.text\.extra'"):
        load_model(d)


def test_misshaped_key(tiny_dir: Path, tmp_path: Path) -> None:
    d = _rewrite(tiny_dir, tmp_path / "s", lambda t: t.__setitem__("model.region.coord_features", torch.zeros(128, 1)))
    with pytest.raises(CheckpointError, match=r"'model.region.coord_features' has shape \[128, 1\], expected \[1, 128\]"):
        load_model(d)


def test_corrupt_file(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "c")
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(d)


def test_key_prefixes_are_normalised(tiny_dir: Path, tmp_path: Path) -> None:
    def strip(t: dict[str, torch.Tensor]) -> None:
        for k in list(t):
            new = k.removeprefix("model.")
            new = new.replace("text.blocks", "text._orig_mod.blocks") if "text.blocks.0" in new else new
            t[new] = t.pop(k)

    d = _rewrite(tiny_dir, tmp_path / "p", strip)
    loaded = load_model(d, dtype=torch.float16)
    want = load_model(tiny_dir, dtype=torch.float16).state_dict()["text.blocks.0.ln.weight"]
    assert torch.equal(loaded.state_dict()["text.blocks.0.ln.weight"], want)
    assert canonical_key("model._orig_mod.text.wte") == "text.wte"
