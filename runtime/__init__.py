"""lucida.runtime."""
