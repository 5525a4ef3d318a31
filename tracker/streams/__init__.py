"""Where ids and order come from when several processes share one log (Redis)."""
