"""common privacy package."""
