"""blendrank: personalized multi-task fusion for ranking."""

__version__ = "0.1.0"
