"""Runs the engine-conformance suite (kvmodel.testing.conformance) on every engine in conftest."""

# The suite is a library module so third-party engines can run it too; the star
# import makes pytest collect its tests here, with this directory's fixtures.
from kvmodel.testing.conformance import *  # noqa: F403
