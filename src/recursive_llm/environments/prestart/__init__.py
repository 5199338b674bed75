"""Pre-started workers for serving: the pool and the template that forks them."""
