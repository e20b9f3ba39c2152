"""Moved to tests/helpers/mbd_checkpoints.py (built by audiocraft itself). This re-export keeps the importers
outside the MBD tests (tests/studio_server.py, tests/test_streaming.py) working until they import
`helpers.mbd_checkpoints` directly; then delete this file."""

from helpers.mbd_checkpoints import (  # noqa: F401
    build_malicious_checkpoint,
    build_mbd_checkpoint,
    build_package,
)
