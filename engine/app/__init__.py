"""The application: the typed job configuration and its checks (``config``: the schema of ``configs/main.yaml``),
the main job as plain functions (``pipeline``), the Hydra entry point that checks a command line before it runs
(``cli``)."""
