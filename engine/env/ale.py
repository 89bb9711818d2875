"""ale_py's ``AtariEnv`` made for its first seeded reset, so that the game's ROM is loaded once.

ale_py loads the ROM in the constructor, with a random seed, and again on ``reset(seed=s)``, with ``s``: about 90 ms
each, holding the GIL. Made with ``first_seed=s``, :class:`OnceLoadedAtariEnv` seeds the constructor's load with
``s``, and a first reset with ``seed=s`` finds the ROM loaded with that very seed: the emulator, its random generator
and ``np_random`` are as after the second load, so the episode is the same, once loaded. A first reset with another
seed, and every later reset, load the ROM as ale_py does (gymnasium's ``OrderEnforcing`` makes the first call a
reset). Its own module, imported only by :func:`engine.env.pipelines.make_env` when it makes one (importing ale_py
takes a while), so that gymnasium names it by a string entry point and environments pickle and serialise their
spec as ale_py's do.
"""

from __future__ import annotations

from typing import Any

from ale_py.env import AtariEnv

ENTRY_POINT = "engine.env.ale:OnceLoadedAtariEnv"


class OnceLoadedAtariEnv(AtariEnv):
    def __init__(self, *args: Any, first_seed: int | None = None, **kwargs: Any) -> None:
        self._first_seed: int | None = first_seed
        self._skip_load = False
        super().__init__(*args, **kwargs)
        self._loaded_with, self._first_seed = first_seed, None

    def seed_game(self, seed: int | None = None) -> tuple[int, int]:
        # the constructor seeds with None (a random seed): the first seed instead, where one was given
        return super().seed_game(self._first_seed if seed is None else seed)

    def load_game(self) -> None:
        if not self._skip_load:
            super().load_game()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        loaded_with, self._loaded_with = self._loaded_with, None
        self._skip_load = seed is not None and seed == loaded_with
        try:
            return super().reset(seed=seed, options=options)
        finally:
            self._skip_load = False
