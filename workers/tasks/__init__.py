"""Thin tasks: take plain JSON, open a session, call one service, commit once."""
