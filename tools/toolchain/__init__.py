"""Float model to device: `lucida quantize`, `check`, `compile`, `bundle`, `deploy`, and their readers."""
