"""What of a chargeback statement a team key sees: its own lines and adjustments, totals of those,
and the fleet-wide parts that name no team (reconciliation, method, factors)."""

from __future__ import annotations

from accounting.chargeback.statements import _totals  # the statement's own rule for totals

SCOPE_NOTE = ("the lines and adjustments of this team only, and totals of those; reconciliation and "
              "method are the fleet's. A final statement's content_hash covers the whole statement, "
              "which admin and finance keys read with GET /v1/statements/{id}")


def team_view(content: dict, team: str) -> dict:
    """A copy of the statement (grouped by team) with only `team`'s lines and adjustments."""
    mine = [x for x in content["lines"] if x["kind"] == "group" and x["group"] == team]
    adjustments = [x for x in content.get("adjustments", []) if x["kind"] == "group" and x["group"] == team]
    return {**content, "lines": mine, "adjustments": adjustments, "totals": _totals(mine),
            "scope": {"team": team, "note": SCOPE_NOTE}}
