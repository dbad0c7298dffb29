"""Analytics over the dashboard's metrics: pure functions over pandas objects."""
