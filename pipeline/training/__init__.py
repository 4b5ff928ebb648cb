"""Training a torch model: `engine` (one epoch, one predict), `recipe` (what a fold trains with, and its resume
state), `loop` (the one epoch loop, for fold k and for --fold full)."""
