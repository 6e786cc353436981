"""Console entry points that join commands from packages that must not import each other."""
