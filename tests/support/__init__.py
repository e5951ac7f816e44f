"""Test-only infrastructure (TLS proxy, test CA, subprocess helpers)."""
