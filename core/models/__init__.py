"""Model building, loading and saving."""
