"""Benches: the method registry, world A/B, kuairand-sim sessions, logs, and the report."""
