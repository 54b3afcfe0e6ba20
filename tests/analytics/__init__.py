"""Tests of the fleet analytics: the rebound decomposition."""
