"""Reading and writing: arrays with their settings, chunked stores, the checkpoint registry, overlays and movies."""
