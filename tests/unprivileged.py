"""Run a subprocess that file permissions bind, as they bind any user, even when the tests
run as root: it loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from its bounding
set before ``exec``), so a ``chmod 000`` file is unreadable to it."""

import ctypes
import os

import pytest

PR_CAPBSET_DROP = 24
DAC_CAPABILITIES = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def _drop_dac_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in DAC_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def bound_by_permissions() -> dict:
    """``subprocess`` keyword arguments for such a child (none needed for a plain user)."""
    if os.geteuid() != 0:
        return {}
    probe = ctypes.CDLL(None, use_errno=True)
    if not hasattr(probe, "prctl"):
        pytest.skip("root without prctl: permissions cannot be enforced on a child")
    return {"preexec_fn": _drop_dac_capabilities}
