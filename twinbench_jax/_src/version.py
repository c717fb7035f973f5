"""The library version and the version of the metric definitions (docs/SPEC.md)."""

__version__ = "0.1.0"

# Bumped whenever the meaning of a reported number changes (SPEC.md), so saved
# reports from different definitions are never silently compared.
METRIC_VERSION = "1"
