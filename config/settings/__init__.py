"""Settings split by environment: base (safe production defaults), dev, test, prod."""
