"""GPU backends: NVML on real hardware, the simulated fleet elsewhere."""
