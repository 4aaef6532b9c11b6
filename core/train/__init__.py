"""The DreamBooth trainer."""
