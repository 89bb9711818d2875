"""Jobs, as plain functions the command line calls: the typed job configuration (``config``), recording games into
stores (``record``: one, or many played together), scoring a store (``score``), both at once (``overlap``), the
checks before a job runs (``prepare``), what it writes (``outputs``), the job of one game (``game``) or of many
(``games``), and the front door over both (``run``)."""
