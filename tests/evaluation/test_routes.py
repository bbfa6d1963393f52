"""Per-token router gates of a tiny random Crab (jitted): each token's gates are a distribution
over the heads and equal what the I-LoRA layer's router computes on that layer's input (read
by a separate probe, not the collection code); modality labels follow the media splice; the
model's mode and record flags come back; summaries are the per-task means of the arrays."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.evaluation.routes import collect_routes, summaries
from crab_jax.families import get
from crab_jax.families.crab import batch_spec
from crab_jax.families.crab.presets import tiny_crab_config
from crab_jax.models.ilora import ILoRALinear
from crab_jax.models.media import AUDIO, TEXT, VISUAL, splice_media

pytestmark = pytest.mark.slow  # a tiny Crab built and compiled twice (collection, probe): ~40 s of CPU

TASKS = ("ave", "avqa", "s4")
HEADS = 3
BATCHES = 2


class _InputProbe(ILoRALinear):
    """An I-LoRA layer that also sows its input (the probe's own intermediate)."""

    def __call__(self, x, **kw):
        self.sow(nnx.Intermediate, "x_seen", x)
        return super().__call__(x, **kw)


@pytest.fixture(scope="module")
def setup():
    family = get("crab")
    cfg = dataclasses.replace(tiny_crab_config(lora_heads=HEADS), seg=None)  # no seg branch: a faster build
    model = family.build_model(cfg, nnx.Rngs(0))
    model.train()  # as the trainer holds it: the collection must run in eval mode and put this back
    spec = batch_spec.BatchSpec(batch=3, seq_len=24, frame_slots=2, audio_slots=1, fbank_frames=32, image_size=56)
    stream = batch_spec.make_random_batches(spec, cfg, 0, tasks=TASKS)
    batches = [next(stream) for _ in range(BATCHES)]
    routes = collect_routes(family, model, cfg, iter(batches), TASKS)
    return family, cfg, model, batches, routes


def test_each_token_has_a_distribution_over_the_heads_for_every_layer_and_projection(setup):
    _, cfg, _, batches, routes = setup
    real = sum(int(np.asarray(b["attention_mask"]).sum()) for b in batches)
    assert routes.gates.shape == (real, cfg.llama.num_hidden_layers, len(cfg.lora.targets), HEADS)
    assert routes.layers == ("layer0", "layer1")
    assert [p.rsplit(".", 1)[-1] for p in routes.projections] == list(cfg.lora.targets)
    np.testing.assert_allclose(routes.gates.sum(-1), 1.0, atol=1e-5)
    assert routes.gates.min() >= 0 and routes.gates.std() > 0  # not all uniform: the routers differ


def assert_gates_are_the_routers_on_each_layers_input(family, model, batch, routes) -> int:
    """Every LLM I-LoRA layer's recorded gates for ``batch`` (the routes' first batch) equal its
    router applied to the input the layer saw (sown by a probe, not by the collection code);
    returns how many (layer, projection) sites were checked. ``model`` is left in training mode."""
    probes = []
    for _, node in nnx.iter_graph(model):
        if isinstance(node, ILoRALinear):
            node.__class__ = _InputProbe
            probes.append(node)
    model.eval()
    try:
        @nnx.jit
        def inputs(m, b):
            _, inter = nnx.capture(lambda mm: family.forward_loss(mm, b, False), nnx.Intermediate)(m)
            return inter

        inter = inputs(model, batch)
    finally:
        for node in probes:
            node.__class__ = ILoRALinear
        model.train()
    seen = {tuple(str(p) for p in path[:-1]): v for path, v in nnx.to_flat_state(inter) if str(path[-1]) == "x_seen"}
    nodes = {tuple(str(p) for p in path): node for path, node in nnx.iter_graph(model) if isinstance(node, ILoRALinear)}
    first = routes.sample < batch["attention_mask"].shape[0]
    sample, position = routes.sample[first], routes.position[first]
    checked = 0
    for path, node in nodes.items():
        if path[0] != family.llm_path:
            continue  # an encoder tower's routers (Crab+): not the LLM's tokens
        at = path.index("layers")
        layer, name = routes.layers.index(f"layer{path[at + 1]}"), ".".join(path[at + 2:])
        x = seen[path].get_value()[0]  # [b, S, in]
        expected = np.asarray(jax.jit(node.router_gates)(jnp.asarray(x)))[sample, position]
        np.testing.assert_allclose(routes.gates[first][:, layer, routes.projections.index(name)], expected, atol=1e-5)
        checked += 1
    return checked


def test_gates_equal_the_router_on_each_layers_input(setup):
    family, cfg, model, batches, routes = setup
    checked = assert_gates_are_the_routers_on_each_layers_input(family, model, batches[0], routes)
    assert checked == cfg.llama.num_hidden_layers * len(cfg.lora.targets)


def test_modality_labels_are_where_the_splice_puts_visual_and_audio_rows(setup):
    family, cfg, model, batches, routes = setup
    offset = 0
    for batch in batches:
        b = batch["attention_mask"].shape[0]
        visual = jax.eval_shape(model.encode_visual, batch["frames"])[0].shape[1]
        audio = jax.eval_shape(model.encode_audio, batch["fbank"], batch["fbank_valid"]).shape[1]
        # Rows tagged by what they are; the splice decides which slot reads which row.
        rows = jnp.concatenate([jnp.full((b, visual, 1), VISUAL, jnp.float32),
                                jnp.full((b, audio, 1), AUDIO, jnp.float32)], axis=1)
        spliced = splice_media(jnp.full((b, batch["media_index"].shape[1], 1), TEXT, jnp.float32), rows,
                               jnp.asarray(batch["media_index"]))
        expected = np.asarray(spliced[..., 0]).astype(np.int32)
        np.testing.assert_array_equal(family.token_modality(batch, cfg), expected)
        mine = (routes.sample >= offset) & (routes.sample < offset + b)
        np.testing.assert_array_equal(routes.modality[mine],
                                      expected[routes.sample[mine] - offset, routes.position[mine]])
        offset += b
    assert set(np.unique(routes.modality)) == {TEXT, VISUAL, AUDIO}


def test_tokens_carry_their_task_position_and_answer_flag(setup):
    _, _, _, batches, routes = setup
    offset = 0
    for batch in batches:
        b = batch["attention_mask"].shape[0]
        mine = (routes.sample >= offset) & (routes.sample < offset + b)
        rows, cols = routes.sample[mine] - offset, routes.position[mine]
        assert np.all(np.asarray(batch["attention_mask"])[rows, cols] > 0)
        np.testing.assert_array_equal(routes.task[mine], np.asarray(batch["task_id"])[rows])
        np.testing.assert_array_equal(routes.target[mine], np.asarray(batch["labels"])[rows, cols] != -100)
        offset += b


def test_mode_and_record_flags_are_put_back(setup):
    _, _, model, _, _ = setup
    dropouts = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.Dropout)]
    assert dropouts and not any(d.deterministic for d in dropouts)  # still in training mode
    assert not any(n.record_gates for _, n in nnx.iter_graph(model) if isinstance(n, ILoRALinear))


def test_summaries_are_token_means_per_task_with_nan_for_a_task_without_tokens(setup):
    _, _, _, _, routes = setup
    s = summaries(routes)
    assert s["task_tokens"].sum() == len(routes.task)
    for t in range(len(TASKS)):
        mine = routes.gates[routes.task == t]
        if len(mine):
            np.testing.assert_allclose(s["task_head"][t], mine.mean(axis=(0, 1, 2)), rtol=1e-6)
            np.testing.assert_allclose(s["task_layer_head"][t], mine.mean(axis=(0, 2)), rtol=1e-6)
            np.testing.assert_allclose(s["task_head"][t].sum(), 1.0, atol=1e-5)
            for m in range(3):
                sub = routes.gates[(routes.task == t) & (routes.modality == m)]
                assert s["task_modality_tokens"][t, m] == len(sub)
                if len(sub):
                    np.testing.assert_allclose(s["task_modality_head"][t, m], sub.mean(axis=(0, 1, 2)), rtol=1e-6)
        else:
            assert np.all(np.isnan(s["task_head"][t]))


@pytest.fixture(scope="module")
def plus_setup():
    """The tiny random Crab+ thinker (I-LoRA in its LLM, vision and audio towers), in training mode,
    and its routes over one random batch with every placeholder kind."""
    from tests.families.crab_plus.thinker_helpers import random_thinker_batch

    family, cfg, batch = random_thinker_batch(2)
    model = family.build_model(cfg, nnx.Rngs(0))
    model.train()
    return family, cfg, model, batch, collect_routes(family, model, cfg, [batch], ("a", "b", "c", "d"))


def test_crab_plus_routes_are_the_decoders_with_its_modalities(plus_setup):
    family, cfg, _, batch, routes = plus_setup
    # The decoder's layers only (the vision / audio towers' routers see patches, not tokens).
    assert routes.gates.shape == (int(batch["attention_mask"].sum()), cfg.text.num_hidden_layers, 7, cfg.lora.num_heads)
    np.testing.assert_allclose(routes.gates.sum(-1), 1.0, atol=1e-5)
    assert routes.gates.std() > 0
    expected = family.token_modality(batch, cfg)[routes.sample, routes.position]
    np.testing.assert_array_equal(routes.modality, expected)
    assert {TEXT, VISUAL, AUDIO} <= set(routes.modality.tolist())
    np.testing.assert_array_equal(routes.task, np.asarray(batch["task_id"])[routes.sample])


def test_crab_plus_gates_equal_the_llm_routers_on_each_layers_input(plus_setup):
    family, cfg, model, batch, routes = plus_setup
    towers = {path[0] for path, node in nnx.iter_graph(model) if isinstance(node, ILoRALinear)}
    assert {family.llm_path, *(t.path for t in family.router_towers)} <= {str(t) for t in towers}
    checked = assert_gates_are_the_routers_on_each_layers_input(family, model, batch, routes)
    assert checked == cfg.text.num_hidden_layers * len(cfg.lora.targets)
