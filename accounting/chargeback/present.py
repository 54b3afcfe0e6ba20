"""The statement dict as `build_statement` makes it → the flat shape the PDF renders: one currency
with its totals, the method's texts under their headings, the factors as a table, and labels
that say what the idle figure of the reconciliation is under the statement's policy."""

from __future__ import annotations

SUMMED = ("energy_kwh", "facility_kwh", "gpu_hours", "co2e_location_g", "co2e_market_g", "embodied_co2e_g")
METHOD_TITLES = {  # statement key → the heading the PDF prints
    "energy": "Energy", "facility": "Facility overhead (PUE)", "cost": "Cost",
    "co2e_location": "Carbon, location-based", "co2e_market": "Carbon, market-based",
    "embodied_co2e": "Embodied carbon (Scope 3)", "unknown": "Missing prices or factors",
    "idle_treatment": "Idle energy", "useful_work": "Useful work",
}
IDLE_LABELS = {
    "separate": "Idle (its own line)",
    "proportional": "Idle no group used that hour (its own line)",
    "none": "Idle (charged to no one)",
}


def _one_currency(totals: dict) -> tuple[dict, str | None]:
    per_currency = {k: v for k, v in totals.items() if isinstance(v, dict)}
    if not per_currency:
        return totals, None
    if len(per_currency) == 1:
        currency, figures = next(iter(per_currency.items()))
        return figures, currency
    merged: dict = {"cost": None}  # amounts in different currencies are not added up
    for key in SUMMED:
        values = [f.get(key) for f in per_currency.values() if f.get(key) is not None]
        merged[key] = sum(values) if values else None
    return merged, " / ".join(sorted(per_currency))


def for_pdf(statement: dict) -> dict:
    st = dict(statement)
    totals, currency = _one_currency(st.get("totals") or {})
    st["totals"] = totals
    lines = st.get("lines") or []
    st["currency"] = st.get("currency") or currency or (lines[0].get("currency") if lines else None) or "USD"
    st["groups"] = sum(1 for line in lines if line.get("kind", "group") == "group")
    method = st.get("method") or {}
    texts = {title: method[key] for key, title in METHOD_TITLES.items() if isinstance(method.get(key), str)}
    factors = dict(method.get("factors") or {})
    for site in method.get("sites") or []:
        factors[f"site {site.get('site')}"] = {k: v for k, v in site.items() if k != "site" and v is not None}
    if method.get("embodied_g_per_gpu_hour"):
        factors["embodied gCO2e per GPU-hour"] = method["embodied_g_per_gpu_hour"]
    st["method"] = {"texts": texts, "factors": factors}
    st["idle_label"] = IDLE_LABELS.get(st.get("idle_policy", ""), "Idle")
    return st
