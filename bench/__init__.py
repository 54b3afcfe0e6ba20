"""Benchmarks: each one command (`python -m bench <name>`, or `make bench` for the quick set),
bounded in time, printing its figures. None is a timed unit test; docs/benchmarks.md keeps the
figures with the commands and the machine that gave them."""
