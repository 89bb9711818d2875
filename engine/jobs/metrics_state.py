"""A store job's faithfulness metrics kept as they accumulate, so that an interrupted job goes on after the chunks it
had added: the deletion/insertion curves cost 2 K forward passes a frame, hours on a long rollout.

After each chunk of the saliency store, the state of :class:`engine.metrics.faithfulness.MetricsSummary` (its sums
over chunks ``0..n-1``) is saved atomically beside the store (``.<store>.metrics.pt``,
:func:`engine.storage.keys.sidecar_path`) with what it depends on: the metrics' settings, whether the maps were
scored on recorded or replayed states, the store's manifest hash (its identity: agent, game, saliency settings) and
a hash chained over those chunks' markers (each binds its chunk's stored bytes). A job of the same settings on the
same chunks reads it back and adds only the chunks after them, in the same order, so its metrics equal an
uninterrupted job's to the bit; a job of a complete store whose metrics were all added reads them back without a
forward pass. Anything else (other settings, another device) starts from the first chunk, saying why, and its file
then replaces the earlier one: one file a store, for the settings last run on it. A memory store or object storage
keeps none; a place that cannot be written gives one warning, and the metrics are computed as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.files import atomic_write
from ..storage.keys import sidecar_path

if TYPE_CHECKING:
    from ..metrics.faithfulness import MetricsSummary
    from ..storage.store import SaliencyStore

log = logging.getLogger(__name__)

FORMAT = 1  # of the saved state; another format starts over


class MetricsProgress:
    """The metrics of the saliency store ``sstore`` as far as they were added, for settings ``settings`` (JSON-able:
    what else the metrics depend on). :meth:`resume` once, then :meth:`added` after each chunk, in order."""

    def __init__(self, sstore: SaliencyStore, settings: dict[str, Any]):
        self.store = sstore.store
        self.path: Path | None = sidecar_path(self.store.root, "metrics.pt")
        self.key = json.dumps(dict(format=FORMAT, store=self.store.hash.hex(), **settings), sort_keys=True, default=str)
        self.chain = hashlib.sha256(self.key.encode()).hexdigest()  # the chunks added so far, hashed in order
        self.chunks = 0

    def _linked(self, chain: str, markers: np.ndarray) -> str:
        for row in markers:
            chain = hashlib.sha256(bytes.fromhex(chain) + row.tobytes()).hexdigest()
        return chain

    def resume(self, summary: MetricsSummary) -> int:
        """Load the saved state into ``summary`` where it is this job's (same key, same chunks' bytes), and return
        how many leading chunks it holds; 0 (``summary`` untouched) otherwise."""
        if self.path is None or not self.path.is_file():
            return 0
        try:
            saved = torch.load(self.path, weights_only=True)
            chunks, chain, key = int(saved["chunks"]), str(saved["chain"]), saved["key"]
        except Exception as exc:  # a damaged file: any error of unpickling or of its contents
            log.warning("metrics: %s is unreadable (%s); computing them from the first chunk", self.path, exc)
            return 0
        if key != self.key:
            log.info("metrics: %s holds other settings' or another store's; computing them anew", self.path)
            return 0
        if not 0 < chunks <= self.store.num_chunks or self._linked(self.chain, self.store.markers(0, chunks)) != chain:
            log.info("metrics: the chunks %s holds metrics of have changed; computing them anew", self.path)
            return 0
        summary.load_state_dict(saved["state"])
        self.chain, self.chunks = chain, chunks
        log.info("metrics: going on after chunk %d of %d (%s)", chunks, self.store.num_chunks, self.path)
        return chunks

    def added(self, k: int, summary: MetricsSummary) -> None:
        """Chunk ``k``, the next, was added to ``summary``: save the state (one warning, and no more saving, where
        that fails)."""
        if k != self.chunks:
            raise ValueError(f"metrics are kept in chunk order: chunk {self.chunks} is next, not {k}")
        self.chain = self._linked(self.chain, self.store.markers(k, k + 1))
        self.chunks += 1
        if self.path is None:
            return
        state = dict(key=self.key, chunks=self.chunks, chain=self.chain, state=summary.state_dict())
        try:
            with atomic_write(self.path) as tmp:
                torch.save(state, tmp)
        except (OSError, RuntimeError) as exc:  # torch.save raises RuntimeError where a write fails (a full disk)
            log.warning(
                "metrics: cannot keep their progress in %s (%s): an interrupted job computes them anew",
                self.path,
                getattr(exc, "strerror", None) or exc,
            )
            self.path = None
