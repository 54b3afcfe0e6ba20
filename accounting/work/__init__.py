"""Useful work: reports, estimates, efficiency (FLOP/J, tokens/J, MFU) and waste."""
