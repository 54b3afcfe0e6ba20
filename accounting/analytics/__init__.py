"""Fleet analytics over accounted energy and work: the rebound ("ambition creep") decomposition."""
