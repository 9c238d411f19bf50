"""API keys (stored hashed) with the roles ``admin`` and ``read``, and the request dependencies that check them."""
