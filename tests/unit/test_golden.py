"""``moonpipe golden-check`` against the reference's md2-tiny goldens (tests/data/golden/md2-tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import GOLDEN_DIR as GOLDEN

from moonpipe.cli import main
from moonpipe.errors import CheckpointError
from moonpipe.model.golden import run_golden_check


def test_golden_check_cli_passes(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["golden-check", str(GOLDEN)])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(("OK", "FAIL"))]
    names = {ln.split()[0] for ln in lines}
    for entry in ("crops_u8", "image_emb", "prefix_hidden_rows", "caption_generated_ids", "point_points",
                  "detect_boxes", "region_test_size_logits", "tiling_table", "caption_step1_logits"):
        assert entry in names
    assert all(ln.rstrip().endswith("OK") for ln in lines)


def test_golden_text_with_page_size_one() -> None:
    torch.set_num_threads(2)
    results = run_golden_check(GOLDEN, page_size=1)
    assert [r.name for r in results if not r.ok] == []


def test_missing_golden_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"golden\.json"):
        run_golden_check(tmp_path)
    assert main(["golden-check", str(tmp_path)]) == 2
