"""Maintenance scripts (test-vector generation)."""
