"""glibc malloc keeps large freed blocks for the next model pass instead of faulting them in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Ten rounds of a 48 MB buffer (above glibc's largest dynamic mmap threshold) written and freed; prints
# the page faults. Transparent huge pages are switched off for the process, so that a page is 4 KB
# however much free memory the machine has at the moment.
CHURN = """
import ctypes, resource
import numpy as np
ctypes.CDLL("libc.so.6").prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
from model.memory import keep_freed_memory
applied = keep_freed_memory()
def round_():
    a = np.empty(48 << 20, np.uint8)
    a.fill(1)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def churn(keep: str) -> tuple[str, int]:
    env = {**os.environ, "AFV_MALLOC_KEEP": keep, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@glibc_only
def test_freed_buffers_are_reused_without_page_faults_unless_switched_off():
    applied, kept = churn("1")
    off, default = churn("0")
    pages = (48 << 20) // 4096
    assert applied == "True" and off == "False"
    assert default >= 5 * pages  # switched off, glibc's default: each round faults its buffer in again
    assert kept <= 2 * pages  # kept: the first round's pages serve the rest
