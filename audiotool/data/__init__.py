"""Real-audio dataset builder (sources from Debian packages)."""
