"""Running the analytics core for the API: worker processes, caching, JSON shapes."""
