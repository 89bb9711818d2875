"""Faithfulness of saliency maps: deletion and insertion curves, sanity checks by cascading randomisation, agreement
with game objects (``regions``), stability; each streamed chunk by chunk for long rollouts."""
