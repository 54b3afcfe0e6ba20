"""Scenarios for the simulated fleet: the `wattledger demo` run and the live fleet of `up`."""
