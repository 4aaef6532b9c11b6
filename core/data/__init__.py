"""Training data: image loading, captions, the DreamBooth dataset."""
