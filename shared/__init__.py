"""Code both the ingest API and the worker import: settings, contracts, models, identity."""
