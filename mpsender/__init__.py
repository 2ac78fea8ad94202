"""mpsender."""
