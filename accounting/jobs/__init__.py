"""Jobs, the GPUs they run on, and their allocations (job ↔ GPU over a time range)."""
