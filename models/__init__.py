"""Model bundles: the manifest format, loading and verification, and the (task, objective) registry."""

from .bundle import Bundle, BundleError, load_bundle, pack_bundle, write_bundle
from .manifest import Manifest
from .registry import Registry, Resolved, resolve_bundle, shipped_bundle

__all__ = [
    "Bundle",
    "BundleError",
    "Manifest",
    "Registry",
    "Resolved",
    "load_bundle",
    "pack_bundle",
    "resolve_bundle",
    "shipped_bundle",
    "write_bundle",
]
