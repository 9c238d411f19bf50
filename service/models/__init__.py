"""The model registry: model definitions, their trained versions (artifacts stored in the database), which
version is active, training jobs, and the synchronous training function the worker and ``rbmrec train`` call."""
