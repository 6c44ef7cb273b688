"""Reading what a device holds and did: `lucida audit` (what the eyepiece showed), `lucida models`
(the bundles a device or this host has)."""
