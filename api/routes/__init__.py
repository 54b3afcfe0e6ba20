"""Thin routes: validate, call one service, commit once, shape the answer."""
