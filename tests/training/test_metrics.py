"""Router usage sums (on device) and their names (host side), family-free: random gates of a
tower laid out ``[b*V, P, k]`` against a per-sample numpy loop, scanned stacks against their
layers, gates found by module path, and the scalar names of the LLM and of encoder towers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.models.ilora import ILoRAConfig, ILoRALinear, record_router_gates
from crab_jax.training.metrics import per_task_sums, router_keys, router_usage_sums, summarize, tower_gates

B, SLOTS, ROWS, K, TASKS, LAYERS, GROUPS = 4, 3, 5, 3, 3, 4, 2


def random_gates(rng, shape):
    logits = rng.normal(size=shape)
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)


def numpy_usage(layers, valid, task_id, num_tasks, num_layers, groups):
    """Per sample: mean gate over its valid rows; per task and group: mean over its samples and
    the group's projections. ``layers``: ``(layer, gates [b, n, k])``. Returns ``{(t, g): [k]}``."""
    acc: dict[tuple[int, int], list] = {}
    for layer, gates in layers:
        g = layer * groups // num_layers
        for i in range(gates.shape[0]):
            rows = np.flatnonzero(valid[i])
            if len(rows):
                acc.setdefault((int(task_id[i].item()), g), []).append(gates[i, rows].mean(0))
    return {key: np.mean(v, axis=0) for key, v in acc.items()}


def as_means(sums, counts):
    sums, counts = np.asarray(sums), np.asarray(counts)
    return {(t, g): sums[t, g] / counts[t, g] for t in range(sums.shape[0]) for g in range(sums.shape[1])
            if counts[t, g] > 0}


@pytest.fixture
def tower():
    """A tower's gates per layer in its batch layout ``[b*V, P, k]``, the ``[b, V*P]`` valid rows
    (sample 1 has none: it must count nowhere) and the task of each sample ``[b, 1]`` (one
    sample per batch row)."""
    rng = np.random.default_rng(0)
    layers = [(layer, random_gates(rng, (B * SLOTS, ROWS, K))) for layer in range(LAYERS)]
    valid = rng.random((B, SLOTS * ROWS)) < 0.6
    valid[1] = False
    task_id = np.array([[0], [2], [2], [0]], np.int32)
    return layers, valid.astype(np.int32), task_id


def test_router_usage_sums_are_per_sample_means_over_valid_rows(tower):
    layers, valid, task_id = tower
    sums, counts = router_usage_sums([(l, jnp.asarray(g)) for l, g in layers], jnp.asarray(valid),
                                     jnp.asarray(task_id), num_tasks=TASKS, num_layers=LAYERS, groups=GROUPS)
    assert sums.shape == (TASKS, GROUPS, K) and counts.shape == (TASKS, GROUPS)
    # sample i's rows are rows i*V .. (i+1)*V - 1 of the tower's batch, each of P gate rows
    want = numpy_usage([(l, g.reshape(B, SLOTS * ROWS, K)) for l, g in layers], valid, task_id, TASKS, LAYERS, GROUPS)
    got = as_means(sums, counts)
    assert set(got) == set(want) == {(0, 0), (0, 1), (2, 0), (2, 1)}  # task 1 has no sample, sample 1 no row
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=str(key))
    # two samples of task 0, one countable of task 2, each over the LAYERS / GROUPS layers of a group
    np.testing.assert_array_equal(np.asarray(counts)[:, 0], [2 * LAYERS / GROUPS, 0, LAYERS / GROUPS])


def test_packed_rows_count_each_sample_on_its_own_rows(tower):
    """Two samples per batch row (``segment_ids`` 1 on the first rows, 2 on the rest): the sums
    equal those of the same samples one per row."""
    layers, valid, _ = tower
    n = valid.shape[1]
    split = n // 3
    segment = np.where(np.arange(n) < split, 1, 2) * valid
    segment_task = np.array([[0, 1], [2, -1], [1, 2], [0, 0]], np.int32)
    args = dict(num_tasks=TASKS, num_layers=LAYERS, groups=GROUPS)
    sums, counts = router_usage_sums([(l, jnp.asarray(g)) for l, g in layers], jnp.asarray(segment),
                                     jnp.asarray(segment_task), **args)
    # The same samples unpacked: every (row, segment) its own sample of the tower's rows.
    samples = [(i, p) for i in range(B) for p in (1, 2) if segment_task[i, p - 1] >= 0]
    unpacked = [(l, g.reshape(B, n, K)[[i for i, _ in samples]]) for l, g in layers]
    one_valid = np.stack([segment[i] == p for i, p in samples])
    one_task = np.array([segment_task[i, p - 1] for i, p in samples])
    want = numpy_usage(unpacked, one_valid, one_task, TASKS, LAYERS, GROUPS)
    got = as_means(sums, counts)
    assert set(got) == set(want) and len(want) > 2
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=str(key))


def test_masked_rows_do_not_count(tower):
    layers, valid, task_id = tower
    changed = [(l, np.where(valid.reshape(B * SLOTS, ROWS)[..., None], g, 1.0 / K + 0.3)) for l, g in layers]
    args = dict(num_tasks=TASKS, num_layers=LAYERS, groups=GROUPS)
    a = router_usage_sums([(l, jnp.asarray(g)) for l, g in layers], jnp.asarray(valid), jnp.asarray(task_id), **args)
    b = router_usage_sums([(l, jnp.asarray(g)) for l, g in changed], jnp.asarray(valid), jnp.asarray(task_id), **args)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    c = router_usage_sums([(l, jnp.asarray(g)) for l, g in changed], jnp.ones_like(jnp.asarray(valid)),
                          jnp.asarray(task_id), **args)
    assert not np.allclose(np.asarray(a[0]), np.asarray(c[0]))  # the same change shows once the rows count


def test_a_scanned_stack_sums_as_its_layers(tower):
    layers, valid, task_id = tower
    args = dict(num_tasks=TASKS, num_layers=LAYERS, groups=GROUPS)
    one_by_one = router_usage_sums([(l, jnp.asarray(g)) for l, g in layers], jnp.asarray(valid),
                                   jnp.asarray(task_id), **args)
    stacked = router_usage_sums([(0, jnp.asarray(np.stack([g for _, g in layers])))], jnp.asarray(valid),
                                jnp.asarray(task_id), **args)
    for a, b in zip(one_by_one, stacked):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_gates_that_do_not_match_the_rows_are_named(tower):
    layers, valid, task_id = tower
    with pytest.raises(ValueError, match=r"router gates \(12, 5, 3\).*4 x 14"):
        router_usage_sums([(0, jnp.asarray(layers[0][1]))], jnp.asarray(valid[:, :14]), jnp.asarray(task_id),
                          num_tasks=TASKS, num_layers=LAYERS, groups=GROUPS)
    assert router_usage_sums([], jnp.asarray(valid), jnp.asarray(task_id), num_tasks=TASKS, num_layers=LAYERS,
                             groups=GROUPS) is None


class _Stack(nnx.Module):
    def __init__(self, container: str, n: int, rngs: nnx.Rngs):
        self.container = container
        lora = ILoRAConfig(r=2, alpha=4.0, num_heads=K, dropout=0.0)
        setattr(self, container, nnx.List([ILoRALinear(4, 4, lora, rngs=rngs) for _ in range(n)]))

    def __call__(self, x):
        for layer in getattr(self, self.container):
            x = layer(x)
        return x


class _TwoTowers(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.llm = _Stack("layers", 3, rngs)
        self.visual = _Stack("blocks", 2, rngs)

    def __call__(self, tokens, patches):
        return self.llm(tokens), self.visual(patches)


def test_tower_gates_are_found_by_path_with_their_layer():
    model = _TwoTowers(nnx.Rngs(0))
    assert record_router_gates(model) == 5
    tokens, patches = jnp.ones((2, 7, 4)), jnp.ones((6, 5, 4))
    _, inter = nnx.capture(lambda m: m(tokens, patches), nnx.Intermediate)(model)
    llm, visual = tower_gates(inter, "llm"), tower_gates(inter, "visual")
    assert sorted(l for l, _ in llm) == [0, 1, 2] and {g.shape for _, g in llm} == {(2, 7, K)}
    assert sorted(l for l, _ in visual) == [0, 1] and {g.shape for _, g in visual} == {(6, 5, K)}
    assert len(tower_gates(inter)) == 5 and tower_gates(inter, "audio_tower") == []


def test_summarize_names_the_llm_as_before_and_each_tower_after_the_task():
    tasks = ("ave", "avqa")
    rng = np.random.default_rng(1)
    llm_sum, vis_sum = rng.random((2, 2, K)), rng.random((2, 1, K))
    llm_count, vis_count = np.array([[2.0, 4.0], [0.0, 0.0]]), np.array([[3.0], [6.0]])
    sums = {"loss": np.float32(1.5), "task_nll": np.ones(2), "task_tokens": np.ones(2), "task_samples": np.ones(2),
            **dict(zip(router_keys(), (llm_sum, llm_count))), **dict(zip(router_keys("vision"), (vis_sum, vis_count)))}
    assert router_keys() == ("router_sum", "router_count")
    out = summarize(sums, tasks)
    router = {k: v for k, v in out.items() if k.startswith("router/")}
    want = {f"router/ave/group{g}/head{h}": llm_sum[0, g, h] / llm_count[0, g] for g in range(2) for h in range(K)}
    want.update({f"router/{t}/vision/group0/head{h}": vis_sum[i, 0, h] / vis_count[i, 0]
                 for i, t in enumerate(tasks) for h in range(K)})
    assert set(router) == set(want)  # no LLM names for avqa: it had no sample (count 0)
    for key, value in want.items():
        assert router[key] == pytest.approx(value), key


def test_per_task_sums_of_packed_rows_skip_empty_sample_slots():
    values = jnp.asarray([[1.0, 2.0, 5.0], [3.0, 4.0, 7.0]])
    task = jnp.asarray([[0, 2, -1], [2, 2, -1]])  # the last slot of each row holds no sample
    np.testing.assert_allclose(np.asarray(per_task_sums(values, task, 3)), [1.0, 0.0, 9.0])
    np.testing.assert_allclose(np.asarray(per_task_sums(values[:, 0], task[:, 0], 3)), [1.0, 0.0, 3.0])
