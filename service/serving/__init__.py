"""Serving: the per-process cache of active model versions, recommendations, predictions and reconstructions."""
