"""Vision encoder pieces: patch order, crop stitching, pooling, the full image path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moonpipe.config import ModelConfig
from moonpipe.model.checkpoint import preset_config
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.vision import create_patches, reconstruct_from_crops
from moonpipe.model.weights import build_random_model


@pytest.fixture(scope="module")
def model() -> MoondreamModel:
    torch.set_num_threads(2)
    cfg = preset_config("tiny")
    return build_random_model(ModelConfig(text=cfg.text, vision=replace(cfg.vision, enc_n_layers=2),
                                          region=cfg.region), seed=5)


def test_patch_vector_order_is_channel_row_col() -> None:
    x = torch.arange(2 * 3 * 378 * 378, dtype=torch.float32).view(2, 3, 378, 378)
    p = create_patches(x)
    assert p.shape == (2, 729, 588)
    # patch (row 1, col 2) of crop 1, element (c=2, dy=3, dx=4)
    assert p[1, 1 * 27 + 2, 2 * 196 + 3 * 14 + 4] == x[1, 2, 14 + 3, 28 + 4]


def test_reconstruct_keeps_interiors() -> None:
    th, tw, g = 2, 3, 27
    local = torch.arange(th * tw, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, g, g, 1).clone()
    canvas = reconstruct_from_crops(local, (th, tw))
    assert canvas.shape == (19 * th + 8, 19 * tw + 8, 1)
    assert canvas[0, 0, 0] == 0 and canvas[-1, -1, 0] == 5
    # the seam between tiles (0, 0) and (0, 1) sits at column 19 + 4 = 23
    assert canvas[10, 22, 0] == 0 and canvas[10, 23, 0] == 1
    assert canvas[22, 10, 0] == 0 and canvas[23, 10, 0] == 3


def test_single_tile_pooling_is_identity(model: MoondreamModel) -> None:
    feats = torch.randn(1, 729, model.config.vision.enc_dim, generator=torch.Generator().manual_seed(1))
    pooled = model.vision.pool_local(feats, (1, 1))
    torch.testing.assert_close(pooled.reshape(729, -1), feats[0])


def test_encode_image_shapes_and_batch_independence(model: MoondreamModel) -> None:
    pixels = torch.rand(7, 3, 378, 378, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        emb = model.encode_image(pixels, (2, 3))
        feats = model.vision.encode(pixels)
        alone = model.vision.encode(pixels[3:4])
    assert emb.shape == (729, model.config.text.dim) and torch.isfinite(emb).all()
    torch.testing.assert_close(alone[0], feats[3], atol=1e-5, rtol=1e-5)
