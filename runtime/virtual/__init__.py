"""lucida.runtime.virtual: a synthetic H&E slide and a virtual microscope to look at it."""
