"""Which config keys a resume compares (everything outside RESUME_SAFE_KEYS) and how."""

from __future__ import annotations

from crab_jax.config import schema
from crab_jax.config.changes import changed_keys, flat_config, is_safe
from crab_jax.config.sections import RunConfig


def base() -> dict:
    return RunConfig.from_config(schema.get_config()).as_dict()


def changed(**overrides) -> dict:
    c = schema.get_config()
    for key, value in overrides.items():
        node = c
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return RunConfig.from_config(c).as_dict()


def test_computation_keys_are_named_with_both_values():
    got = changed_keys(base(), changed(seed=1, optim__grad_clip=0.0, model__lora__r=2,
                                       model__init_checkpoint="/ckpt", train__global_batch=16,
                                       data__tasks=("avqa",), trainable=(r"^llm\.",)))
    assert [k for k, _, _ in got] == ["data.tasks", "model.init_checkpoint", "model.lora.r", "optim.grad_clip",
                                      "seed", "train.global_batch", "trainable"]
    assert dict((k, (a, b)) for k, a, b in got)["seed"] == (0, 1)


def test_safe_keys_are_not_compared():
    new = changed(train__num_steps=999, train__epochs=3, eval__every_steps=5, metrics__log_every=7,
                  checkpoint__every_steps=3, checkpoint__keep=9, data__cache_dir="/elsewhere", mesh__fsdp=4,
                  train__allow_config_change=True, checkpoint__fallback_on_corrupt=False)
    assert changed_keys(base(), new) == []


def test_every_safe_key_is_declared_in_the_schema():
    keys = set(flat_config(base()))
    for safe in schema.RESUME_SAFE_KEYS:
        assert any(k == safe or k.startswith(safe + ".") for k in keys), safe


def test_json_round_trip_and_older_checkpoints():
    saved = base()
    saved["model"]["lora"]["targets"] = list(saved["model"]["lora"]["targets"])  # JSON lists
    del saved["train"]["global_batch"]  # a checkpoint written before a key existed: not compared
    assert changed_keys(saved, changed(train__global_batch=16)) == []
    saved["model"]["seg_branch"] = 1  # True == 1 in Python, not in a config
    assert [k for k, _, _ in changed_keys(saved, base())] == ["model.seg_branch"]


def test_is_safe_matches_whole_sections_and_keys_only():
    assert is_safe("eval.every_steps") and is_safe("train.num_steps")
    assert not is_safe("train.num_steps_extra") and not is_safe("train.global_batch")
