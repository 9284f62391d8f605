"""Data: text front-end, audio I/O, corpus readers, the built-in synthetic corpus."""
