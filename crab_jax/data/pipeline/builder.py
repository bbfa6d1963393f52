"""The one seam between the shared data pipeline and a model family: :class:`ExampleBuilder`.

The pipeline (plan index, buckets, epoch plans, Grain workers, bad-record accounting,
sharding, resume) never looks inside a record's example or a batch: it hands records to the
family's builder (``family.example_builder(model_cfg, data, root, tokenizer)``) and passes
what comes back to the builder again. Records are the shared
:class:`~crab_jax.data.records.record.Record` (the pipeline reads ``record.source`` only);
examples are the family's own picklable objects.

The builder is pickled into every Grain worker process, so it holds only picklable state
(settings, the tokenizer).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from crab_jax.data.pipeline.buckets import Bucket, PlanInfo


class ExampleBuilder(Protocol):
    """Record -> example -> static-shape batch, for one family and one run's settings.

    Every method raising for a bad record raises
    :class:`~crab_jax.data.errors.BadRecordError` (path + reason); the pipeline counts it.
    """

    def plan_info(self, record) -> PlanInfo:
        """Token length after expansion and fbank frames of ``record``, decoding as little as
        possible (the plan index runs it over every record before training)."""

    def build(self, record, index: int) -> Any:
        """The decoded example of ``record`` (``index``: its position in the record list)."""

    def fits(self, example, bucket: Bucket) -> str | None:
        """Why ``example`` does not fit its planned ``bucket`` (None when it fits)."""

    def filler(self, example) -> Any:
        """A copy of ``example`` that adds nothing to any loss (completes a partial batch)."""

    def blank(self) -> Any:
        """A minimal filler example, for a batch whose every record failed to decode."""

    def collate(self, examples: Sequence, bucket: Bucket) -> dict[str, np.ndarray]:
        """Examples that fit ``bucket`` -> one batch, every array of the bucket's static shape."""

    # Optional: ``collate_packed(rows, bucket) -> batch``, rows of several examples each for a packed
    # bucket (:attr:`Bucket.packed`); a builder without it cannot train with ``data.packing``.

    def bucket_spec(self, bucket: Bucket, batch: int) -> Any:
        """The family's BatchSpec of ``bucket`` with ``batch`` samples (one compile each)."""

    def cache_key(self) -> str:
        """Changes whenever :meth:`plan_info` of an unchanged record may change (settings,
        vocabulary); keys the plan-index cache together with the records."""

    def record_files(self, record) -> Sequence[str]:
        """The files ``record`` reads (their size and mtime key the plan-index cache)."""

    min_fbank_frames: int
    """Fewest fbank frames per audio segment the model reads (the data checker's ``too_short``)."""

    # -- prepared data (ArrayRecord shards, :mod:`crab_jax.data.prepared`) -----------------
    dataset_name: str
    """TFDS builder name of prepared data (its folder under the output directory)."""

    def stored_settings(self) -> Mapping[str, Any]:
        """JSON-able settings that change stored examples; a reading run must agree on each."""

    def features(self) -> Any:
        """The ``tfds.features.FeaturesDict`` of one stored example."""

    def to_features(self, example) -> dict:
        """``example`` -> a dict matching :meth:`features`."""

    def from_features(self, features: Mapping[str, Any], index: int) -> Any:
        """A stored example back (``index``: its position in the prepared data)."""

    def example_plan_info(self, example) -> PlanInfo:
        """:class:`PlanInfo` of a decoded example (what :meth:`plan_info` gave its record)."""
