"""lucida.overlay."""
