"""The routing figures, read back from their PNGs: one row per task and one column per head (the
plotted matrix in the PNG metadata), a non-blank image, degenerate inputs (one task, a task
without tokens) drawn without NaN trouble; the similarity matrix symmetric with ones on the
diagonal, identical routings at 1 and clustered next to each other."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crab_jax.evaluation import route_figures as F
from crab_jax.evaluation.routes import js_divergence, routing_similarity, summaries
from tests.evaluation.route_helpers import K, L, P, make_routes

def read_png(path):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    meta = json.loads(image.text[F.PLOT_METADATA_KEY])
    pixels = np.asarray(image.convert("RGB"))
    return meta, pixels


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The three figures of 4 tasks, the last one without tokens, saved as PNG."""
    rng = np.random.default_rng(0)
    tasks = ("avqa", "ave", "s4", "empty")
    routes = make_routes(tasks, rng.integers(0, 3, 60), rng)
    out = tmp_path_factory.mktemp("figures")
    for name, fig in F.route_figures(routes).items():
        F.save_png(fig, out / name)
    return routes, out


def test_head_task_png_has_one_row_per_task_and_one_column_per_head(written):
    routes, out = written
    meta, pixels = read_png(out / F.HEAD_TASK_PNG)
    assert meta["kind"] == "head_task" and meta["shape"] == [len(routes.tasks), K]
    assert meta["rows"] == list(routes.tasks) and meta["cols"] == [f"head{h}" for h in range(K)]
    values = np.array([[np.nan if v is None else v for v in row] for row in meta["values"]])
    np.testing.assert_allclose(values[:3], summaries(routes)["task_head"][:3], rtol=1e-6)
    assert np.all(np.isnan(values[3]))  # the task without tokens: an empty (grey) row
    assert pixels.ndim == 3 and pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def test_layer_png_has_a_panel_per_layer_of_tasks_by_heads(written):
    routes, out = written
    meta, pixels = read_png(out / F.LAYERS_PNG)
    assert meta["shape"] == [len(routes.tasks), L, K] and meta["panels"] == list(routes.layers)
    assert meta["rows"] == list(routes.tasks) and len(meta["cols"]) == K
    assert pixels.std() > 10


def test_similarity_png_covers_the_tasks_with_tokens_symmetric_with_a_unit_diagonal(written):
    routes, out = written
    meta, pixels = read_png(out / F.SIMILARITY_PNG)
    assert sorted(meta["rows"]) == sorted(routes.tasks[:3]) and meta["rows"] == meta["cols"]
    sim = np.array(meta["values"], float)
    np.testing.assert_allclose(sim, sim.T)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    assert np.all((sim >= 0) & (sim <= 1)) and pixels.std() > 10


def test_similarity_clusters_tasks_that_route_alike():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(L, P, K)) * 3, rng.normal(size=(L, P, K)) * 3
    tasks = ("a1", "b1", "a2", "b2")
    task_of_token = np.repeat(np.arange(4), 40)
    routes = make_routes(tasks, task_of_token, rng, logits_by_task=[a, b, a, b])
    sim, order = routing_similarity(summaries(routes)["task_site_head"], routes.tasks)
    np.testing.assert_allclose(sim, sim.T)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    where = {t: i for i, t in enumerate(order)}
    assert abs(where["a1"] - where["a2"]) == 1 and abs(where["b1"] - where["b2"]) == 1
    assert sim[where["a1"], where["a2"]] > sim[where["a1"], where["b1"]]


def test_js_divergence_is_zero_for_equal_one_for_disjoint_distributions():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.0, 1.0])
    assert js_divergence(p, p) == 0.0 and js_divergence(p, q) == pytest.approx(1.0)
    assert js_divergence(p, q) == js_divergence(q, p)


def test_one_task_and_no_tokens_draw_without_nan_trouble(tmp_path):
    rng = np.random.default_rng(2)
    one = make_routes(("only",), np.zeros(10, int), rng)
    figs = F.route_figures(one)
    for name, fig in figs.items():
        F.save_png(fig, tmp_path / name)
        meta, _ = read_png(tmp_path / name)
        assert meta["rows"] == ["only"]
    sim, order = routing_similarity(summaries(one)["task_site_head"], one.tasks)
    assert order == ("only",) and sim.tolist() == [[1.0]]
    empty = make_routes(("x", "y"), np.zeros(0, int), rng)
    sim, order = routing_similarity(summaries(empty)["task_site_head"], empty.tasks)
    assert sim.shape == (0, 0) and order == ()
    for name, fig in F.route_figures(empty).items():
        F.save_png(fig, tmp_path / f"empty_{name}")
        assert read_png(tmp_path / f"empty_{name}")[1].std() > 0


def test_figure_rgb_is_an_hwc_uint8_image_of_the_figure(written):
    routes, _ = written
    fig = F.head_task_figure(summaries(routes)["task_head"], routes.tasks, routes.heads)
    rgb = F.figure_rgb(fig)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    w, h = fig.get_size_inches() * fig.dpi
    assert rgb.shape[:2] == (round(h), round(w)) and rgb.std() > 10
