"""Next-token losses against torch's cross-entropy (value and gradient)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crab_jax.models.losses import IGNORE_INDEX, lm_loss, per_sample_lm_sums


def _batch(seed=0, b=3, s=9, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, s, v)).astype(np.float32)
    labels = rng.integers(0, v, size=(b, s))
    labels[rng.random((b, s)) < 0.3] = IGNORE_INDEX
    labels[0] = IGNORE_INDEX  # a sample without predicted tokens
    return logits, labels


def test_lm_loss_and_gradient_match_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    logits, labels = _batch()
    lt = torch.from_numpy(logits).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(lt[:, :-1].reshape(-1, logits.shape[-1]),
                                            torch.from_numpy(labels[:, 1:]).reshape(-1), ignore_index=IGNORE_INDEX)
    ref.backward()
    value, grad = jax.value_and_grad(lambda x: lm_loss(x, jnp.asarray(labels)))(jnp.asarray(logits))
    np.testing.assert_allclose(value, ref.item(), rtol=1e-6)
    np.testing.assert_allclose(grad, lt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_per_sample_sums_count_predicted_tokens():
    logits, labels = _batch(seed=1)
    sums, counts = per_sample_lm_sums(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_array_equal(counts, (labels[:, 1:] != IGNORE_INDEX).sum(1))
    assert float(sums[0]) == 0.0 and np.all(np.asarray(sums)[counts > 0] > 0)
