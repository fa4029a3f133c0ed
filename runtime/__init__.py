"""runtime/: see the layout table in README.md."""
