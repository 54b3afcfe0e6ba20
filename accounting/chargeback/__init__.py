"""Chargeback: sites (PUE, grid zone), prices, carbon, and immutable statements."""
