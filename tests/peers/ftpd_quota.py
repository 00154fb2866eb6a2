"""python3 ftpd_quota.py QUOTA [the arguments of `python3 -m pyftpdlib`]

pyftpdlib (PyPI) whose stored files may not grow past QUOTA bytes: a write beyond it fails
as on a full disk (EDQUOT), so pyftpdlib stops the upload midway, closing the data
connection, then replies 426 on the control connection. The refusal comes before the bytes
reach the file's buffer, so closing the file cannot fail again (with a real EFBIG it can,
and pyftpdlib 2.2 then never sends its reply).
"""
import errno
import os
import sys

from pyftpdlib import filesystems
from pyftpdlib.__main__ import main

QUOTA = int(sys.argv[1])


class QuotaFile:
    """A file opened for writing that refuses the bytes past QUOTA."""

    def __init__(self, f):
        self._f = f
        self._written = 0

    def write(self, data):
        if self._written + len(data) > QUOTA:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        self._written += len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


_open = filesystems.AbstractedFS.open


def open_with_quota(self, filename, mode):
    f = _open(self, filename, mode)
    return QuotaFile(f) if ("w" in mode or "a" in mode) else f


filesystems.AbstractedFS.open = open_with_quota
main(sys.argv[2:])
