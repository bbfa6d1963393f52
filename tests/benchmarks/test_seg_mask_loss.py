"""``benchmarks/seg_mask_loss.py``: its variants decode the same mask loss (timings not checked)."""

from __future__ import annotations

import re

import pytest

from benchmarks import seg_mask_loss as B


@pytest.mark.slow  # the benchmark's variants compiled with their gradients: ~60 s on 2 cores
def test_every_seg_chunk_gives_the_full_decodes_mask_loss(capsys):
    assert B.main(["--preset", "tiny", "--batch", "4", "--seg-samples", "2", "--avss", "1", "--chunk", "2",
                   "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| \d+ \|", line)]
    losses = {int(r.split("|")[1]): float(r.split("|")[3]) for r in rows}
    assert sorted(losses) == [0, 2] and losses[0] > 0
    assert all(abs(v - losses[0]) <= 1e-6 * abs(losses[0]) for v in losses.values())


def test_fixture_sizes_come_from_the_manifest(fixtures_dir, manifest):
    cfg = B.seg_config("fixture", fixtures_dir)
    config = manifest["fixtures"]["crab_full"]["config"]
    assert cfg.prompt_embed_dim == config["seg"]["prompt_embed_dim"]
    assert cfg.vit_dim == config["seg"]["vit_image_embedding_dim"]
    assert cfg.d_model == config["llama_config"]["hidden_size"]
