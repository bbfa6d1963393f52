"""The train step's activation sharding: under FSDP on 8 (fake CPU) devices, the lowered step pins
the decoder's hidden states, MLP activations and logits to the batch axes (logical activation axes,
``parallel.sharding.constrain``, the trainer tracing inside ``activation_sharding``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests import jax_env
from tests.train_helpers import REPO

_SCRIPT = r"""
import json
import jax
from tests.train_helpers import small_config
from crab_jax.config.sections import RunConfig
from crab_jax.training.setup import build_setup
from crab_jax.training.step import jit_train_step, make_train_step
assert jax.device_count() == 8, jax.device_count()
c = small_config(**{"mesh.data": 2, "mesh.fsdp": 4, "mesh.tensor": 1, "train.global_batch": 8})
setup, _, _ = build_setup(c)
family, cfg = setup.family, setup.model_cfg
spec = family.batch.spec(RunConfig.from_config(c).data, cfg, c.train.global_batch)
shapes = {k: s for k, (s, _) in family.batch.shapes(spec, cfg).items()}
batch = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in family.batch.shapes(spec, cfg).items()}
step = jit_train_step(setup, make_train_step(setup, micro_batches=1, with_seg=False,
                      num_tasks=len(c.data.tasks), router_groups=2), shapes)
text = step.lower(setup.abstract, batch).as_text()
llm = cfg.llama  # the tests' small config is Crab's tiny model
print("RESULT", json.dumps({"text": text, "batch": c.train.global_batch, "embed": llm.hidden_size,
                            "mlp": llm.intermediate_size, "vocab": llm.vocab_size,
                            "seq": shapes["input_ids"][1]}))
"""


@pytest.fixture(scope="module")
def lowered():
    env = dict(os.environ, XLA_FLAGS=jax_env.xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def constrained_shardings(text: str, shape: tuple[int, ...]) -> set[str]:
    """The per-dim shardings of every sharding constraint on a ``shape`` f32 tensor in the lowered
    module (Shardy: ``sdy.sharding_constraint %x <@mesh, [{"data", "fsdp"}, {}, {}]> : tensor<..>``)."""
    dims = "x".join(map(str, shape))
    found = set()
    for line in text.splitlines():
        m = re.search(rf"sdy\.sharding_constraint .*<@mesh, (\[.*\])> : tensor<{dims}xf32>", line)
        if m:
            found.add(m.group(1))
    return found


@pytest.mark.slow  # lowers the tiny step on 8 devices in a subprocess (~20 s)
def test_decoder_activations_are_sharded_over_the_batch_axes_under_fsdp(lowered):
    text, b = lowered["text"], lowered["batch"]
    seq = lowered["seq"]
    # data (2) x fsdp (4) on the batch dim, every other dim whole
    for width in (lowered["embed"], lowered["mlp"], lowered["vocab"]):
        shardings = constrained_shardings(text, (b, seq, width))
        assert shardings == {'[{"data", "fsdp"}, {}, {}]'}, (width, shardings)
