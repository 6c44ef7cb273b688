"""The demo world: training data from synthetic slides, the demo net, `lucida train-demo`, `lucida demo`, `lucida eval`."""
