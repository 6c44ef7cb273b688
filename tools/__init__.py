"""lucida.tools."""
