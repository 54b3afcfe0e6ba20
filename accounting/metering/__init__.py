"""Node-side metering: per-interval GPU energy, the on-disk spool, the sampler and its loop."""
