"""Storage only: chunked zarr stores of rollouts and saliency (``store``), arrays with their settings and the one
atomic-write helper (``arrays``). Playing games and scoring them live in :mod:`engine.jobs`."""
