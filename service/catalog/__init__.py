"""Users and items, addressed by the callers' external string ids."""
