"""A test-made AV-UIE v2 data root over the fixtures' real media (``shared/media``)."""

from __future__ import annotations

import os
import pathlib

from crab_jax.data.records.crab_plus import read_crab_plus_task
from crab_jax.data.records.record import Record
from tests.data.records.annotations import write_file
from tests.families.crab_plus.test_chat import _entry_from_conversation
from tests.families.crab_plus.test_prompts import entry_for, read_one


def fixture_media_path(fixtures_dir: pathlib.Path, record_path: str) -> pathlib.Path:
    """``AVUIE_2/<task>/<dir>/<file>`` -> ``shared/media/<task>/<file>`` (fixture README)."""
    parts = pathlib.PurePosixPath(record_path).parts
    assert parts[0] == "AVUIE_2", record_path
    return pathlib.Path(fixtures_dir).parent.parent / "media" / parts[1] / parts[-1]


def link_media(root: pathlib.Path, fixtures_dir: pathlib.Path, conversation) -> None:
    """Symlinks every media item of ``conversation`` at its AVUIE_2 path under ``root``."""
    for turn in conversation:
        if isinstance(turn["content"], str):
            continue
        for item in turn["content"]:
            kind = item["type"]
            if kind == "text":
                continue
            target = root / item[kind]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(fixture_media_path(fixtures_dir, item[kind]).resolve(), target)


def fixture_records(root: pathlib.Path, fixtures_dir: pathlib.Path, config: dict) -> list[Record]:
    """The fixture's conversations as AV-UIE v2 training records under ``root`` (media linked)."""
    records = []
    for i, (conv, task) in enumerate(zip(config["conversations"], config["tasks"])):
        link_media(root, fixtures_dir, conv)
        record = read_one(root / f"annotations{i}", task, "train", _entry_from_conversation(conv, task))
        records.append(record)
    return records


def _media_fields(conversation, task: str) -> dict:
    """The entry's media path fields behind a conversation's items (B.3 layouts)."""
    root = f"AVUIE_2/{task}/"
    image_task = task in ("s4", "ms3", "ref_avs", "arig")
    out = {}
    for item in conversation[1]["content"]:
        kind = item["type"]
        if kind == "text":
            continue
        rel = item[kind][len(root):]
        key = "visual_path" if kind == "image" else f"{kind}_path"
        out[key] = rel if image_task else rel[len(kind) + 1:]
        if "idx" in item:
            out["frame_idx"] = item["idx"]
    return out


def generation_records(root: pathlib.Path, fixtures_dir: pathlib.Path, config: dict) -> list[Record]:
    """The generate_plus fixture's samples as AV-UIE v2 *test* records under ``root`` (media
    linked, the GT fields from the fixture's metadata), in the fixture's batch order."""
    entries: dict[str, list] = {}
    for conv, task, meta in zip(config["conversations"], config["tasks"], config["metadata"]):
        link_media(root, fixtures_dir, conv)
        given = _media_fields(conv, task)
        if task == "ave":  # "event:E start_time:s end_time:e"
            head, _, end = meta["output"].rpartition(" end_time:")
            event, _, start = head.rpartition(" start_time:")
            given.update(event=event[len("event:"):], start_time=int(start), end_time=int(end))
        for key in ("a_obj",):
            if key in meta:
                given[key] = meta[key]
        entries.setdefault(task, []).append(entry_for(task, "test", **given))
    for task, rows in entries.items():
        write_file(root, f"AVUIE_2/{task}/test.json", rows)
    return [r for task in dict.fromkeys(config["tasks"]) for r in read_crab_plus_task(task, "test", root).records]
