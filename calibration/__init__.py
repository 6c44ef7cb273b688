"""lucida.calibration."""
