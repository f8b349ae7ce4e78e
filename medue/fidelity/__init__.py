"""Clinical-utility metrics and the release gate."""
