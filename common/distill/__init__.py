"""common distill package."""
