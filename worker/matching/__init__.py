"""Matching a batch of envelopes: parse → lock → load → rules (pure) → write → read outcomes."""
