"""Prefect layer: flows and thin task wrappers around the plain service modules."""
