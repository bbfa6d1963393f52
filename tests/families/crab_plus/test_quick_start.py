"""``python -m crab_jax.infer`` on Crab+ weights: the generate_plus fixture's samples as AV-UIE v2
test records, the fixture's tiny model converted by ``crab-convert-weights to-jax``.

* ``--right-padding`` at batch 2 reproduces the original's batched generation (its shorter
  row generates after its pads): the generated ids and ``predict`` texts of the fixture;
* requests on the user's own clips (``--input``) get the same prompts; with the default left
  padding every row gets its batch-of-1 answer (``single{i}`` arrays).

Ids may differ only from a step the fixture flags as a near tie.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from crab_jax.cli.quick_start import main as infer_main
from tests.families.crab_plus.avuie2_root import generation_records
from tests.families.crab_plus.convert.conftest import cli as convert_cli
from tests.families.crab_plus.test_generate import _assert_ids, _near_ties
from tests.families.crab_plus.thinker_helpers import MODEL_DIR, fixture_arrays

FIXTURE = "generate_plus"


@pytest.fixture(scope="module")
def prepared(crab_plus_fixtures_dir, crab_plus_manifest, tmp_path_factory):
    """``(converted weights, data root, fixture config)``."""
    config = crab_plus_manifest["fixtures"][FIXTURE]["config"]
    base = tmp_path_factory.mktemp("quick_start")
    lora = crab_plus_manifest["fixtures"]["state_dict_names"]["config"]["tiny_lora"]
    tiny = crab_plus_fixtures_dir / "tiny_model"
    weights = base / "weights"
    assert convert_cli("to-jax", "--out", weights, "--hf", tiny / "Qwen2.5-Omni-tiny", "--adapter",
                       tiny / "checkpoint-1" / "finetune_weights.bin", "--lora-alpha", lora["lora_alpha"],
                       "--tokenizer", crab_plus_fixtures_dir / MODEL_DIR) == 0
    root = base / "data"
    generation_records(root, crab_plus_fixtures_dir, config)
    return weights, root, config


def _infer(prepared, out, *extra) -> list[dict]:
    weights, root, config = prepared
    tasks = ",".join(dict.fromkeys(config["tasks"]))
    argv = ["--weights", str(weights), "--family", "crab_plus", "--data-root", str(root), "--tasks", tasks,
            "--output", str(out), "--max-new-tokens", str(config["max_new_tokens"]), "--batch-size",
            str(len(config["tasks"])), "--length-multiple", "4096", "--no-progress", *extra]
    assert infer_main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_right_padding_reproduces_the_originals_batch(prepared, crab_plus_fixtures_dir, crab_plus_manifest, tmp_path):
    arrays = fixture_arrays(crab_plus_fixtures_dir, FIXTURE)
    lines = _infer(prepared, tmp_path / "preds.jsonl", "--right-padding")
    config = prepared[2]
    assert [line["task"] for line in lines] == config["tasks"]
    ties = _near_ties(crab_plus_manifest)
    pad = crab_plus_manifest["fixtures"][FIXTURE]["checks"]["pad_token_id"]
    ids = np.full_like(arrays["generated_ids"], pad)  # past EOS the original writes pads
    for i, line in enumerate(lines):
        ids[i, : len(line["generated_ids"])] = line["generated_ids"]
        assert line.get("output") == config["metadata"][i]["output"]  # the GT string the original stores
    _assert_ids(ids, arrays["generated_ids"], ties, "right-padded")
    exact = [i for i in range(len(lines)) if not any(row == i for _, row in ties)]
    for i in exact:
        assert lines[i]["predict"] == config["predict"][i]


def test_requests_on_own_clips_left_padded_get_their_batch_of_one_answers(prepared, crab_plus_fixtures_dir,
                                                                         crab_plus_manifest, tmp_path):
    """``--input`` requests on the media files themselves (no AV-UIE v2 layout) get the dataset
    test records' prompts; batched with the default left padding, every row gets the answer it
    gets alone (the fixture's ``single{i}``), unlike the original's right-padded batch."""
    weights, _, config = prepared
    arrays = fixture_arrays(crab_plus_fixtures_dir, FIXTURE)
    media = crab_plus_fixtures_dir.parent.parent / "media"
    requests = []
    for task, conv in zip(config["tasks"], config["conversations"]):
        request = {"task": task}
        for item in conv[1]["content"]:
            kind = item["type"]
            if kind != "text":  # AVUIE_2/<task>/<folder>/<file> -> <task>/<file> under shared/media
                parts = item[kind].split("/")
                request[f"{kind}_path"] = f"{parts[1]}/{parts[-1]}"
                if "idx" in item:
                    request["frame_idx"] = item["idx"]
        requests.append(request)
    path = tmp_path / "requests.json"
    path.write_text(json.dumps(requests))
    out = tmp_path / "preds.jsonl"
    assert infer_main(["--weights", str(weights), "--family", "crab_plus", "--input", str(path), "--media-root",
                       str(media), "--output", str(out), "--max-new-tokens", str(config["max_new_tokens"]),
                       "--batch-size", str(len(requests)), "--length-multiple", "4096", "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ties = _near_ties(crab_plus_manifest)
    pad = crab_plus_manifest["fixtures"][FIXTURE]["checks"]["pad_token_id"]
    for i, line in enumerate(lines):
        want = arrays[f"single{i}_generated_ids"].reshape(1, -1)
        got = np.full(want.shape, pad, np.int64)
        got[0, : len(line["generated_ids"])] = line["generated_ids"]
        _assert_ids(got, want, ties, f"request {i}")
        assert line["predict"] == config["predict_single"][i]
    padded = crab_plus_manifest["fixtures"][FIXTURE]["checks"]["rows_with_right_padding"]
    assert padded, "the fixture's batch has a right-padded row (the quirk --right-padding is about)"
