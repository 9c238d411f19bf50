"""Ratings: one per (user, item), upserted one at a time, in atomic JSON batches, as streamed CSV, or by bulk import."""
