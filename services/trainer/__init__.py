"""The trainer service: per-company and per-user adapters from tenant data, evaluated and leakage-gated."""
