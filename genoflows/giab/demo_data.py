"""Moved to `genoflows.testing.giab_world` (a test world is not domain code); this alias keeps the callers owned by
other areas (tests/test_giab_references.py, tests/test_deployments.py) working until they import the new path."""

from genoflows.testing.giab_world import *  # noqa: F403
from genoflows.testing.giab_world import CONFIDENT, REFERENCE_NAMES, DemoWorld, Expected  # noqa: F401
