"""The user-facing surface: the `echo-tts` command line (and, later, synthesize() and the demo)."""
