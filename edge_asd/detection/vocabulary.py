"""Names that the config, the CLI, calibration and bundles share, each defined once.

Kept free of numpy (and of the detection code) on purpose: `edge-asd` builds its argument
parser, whose choices come from here, before `run` limits the BLAS thread pools, and that limit
only takes effect if numpy has not been loaded yet; the config validates against these names
without loading calibration, which needs the config. The scoring methods are the registry in
`methods` (also importable without numpy); machine states and event kinds are in `states`.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

RhoScope = Literal["all", "non_overlapping", "other_groups"]
"""Which bank entries may be neighbours of an entry y for rho_K(y) (memory_bank.MemoryBank):

- ``all``: every other entry (the original behaviour, and what a bank without groups does);
- ``non_overlapping``: not the windows of y's group that overlap y in time;
- ``other_groups``: only entries of other groups (clips / stretches).
"""
RHO_SCOPES: Final[tuple[str, ...]] = get_args(RhoScope)

THRESHOLD_METHODS: Final[tuple[str, ...]] = ("gamma", "quantile")
"""How calibration turns held-out normal scores into a threshold (calibration.fit_threshold):
a gamma fitted to the scores, or their empirical quantile."""

AGGREGATES: Final[tuple[str, ...]] = ("mean", "max")
"""How a clip's window scores become one clip score (scoring.ClipScorer)."""
DEFAULT_AGGREGATE: Final = "mean"

DECISION_RULES: Final[tuple[str, ...]] = ("evidence", "hysteresis")
"""How window scores become alarms (detector): evidence accumulated over time against the
calibrated false-alarm budget, or N consecutive windows over a threshold."""
DEFAULT_DECISION_RULE: Final = "evidence"

EMBEDDING_VIEW: Final = "embedding"
"""The learned encoder's embedding: the view every bundle has."""
FEATURE_VIEWS: Final[tuple[str, ...]] = ("bands", "tonal", "modulation", "transient", "subframes")
"""The cheap numpy views beside the embedding (views.py says what each sees)."""
VIEWS: Final[tuple[str, ...]] = (EMBEDDING_VIEW, *FEATURE_VIEWS)
AUTO_VIEWS: Final = "auto"
DEFAULT_VIEWS: Final[tuple[str, ...]] = (EMBEDDING_VIEW,)
"""The embedding alone. `auto` ranks anomalies better on the development sets but its feature
views alarm on normal running that calibration did not hear (docs/results.md, "Several views,
one decision"), and false alarms are what a plant judges first."""
"""calibration.views: calibration chooses the views and their weights from held-out normal
windows (fusion.choose_views)."""
