"""Jobs: the typed job configuration (``config``), recording a game into a store (``record``), scoring a store
(``score``), both at once (``overlap``), and the main job over a store (``run``), as plain functions the command
line calls."""
