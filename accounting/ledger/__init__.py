"""Raw samples, attribution of each interval's energy, and the hourly energy ledger."""
