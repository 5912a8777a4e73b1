"""Drills: scenario runs against the live services, and their after-action reports."""
