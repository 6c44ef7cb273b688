"""`lucida calibrate ...`: the optics calibration CLI, its simulated captures, accuracy trials and doc pictures."""
