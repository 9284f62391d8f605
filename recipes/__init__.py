"""Echo's recipes: the scripts that prepare corpora, train, evaluate and benchmark.

Each is run as a script (`python recipes/train_lm.py ...`, `accelerate launch recipes/train_lm.py
...`) and imported as a module (`from recipes import train_lm`) by the quickstart and the tests.
"""
