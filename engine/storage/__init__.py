"""Storage only: chunked zarr stores of rollouts and saliency (``store``; where they live and their keys: ``keys``;
what they hold and its limits: ``layout``; many games' stores under one root: ``games``), arrays with their settings
(``arrays``). Playing games and scoring them live in :mod:`engine.jobs`."""
