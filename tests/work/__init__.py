"""Tests of useful work: estimates, reports, the reporter."""
