"""Where robust-api keeps its files by default: the user's data directory.

One function, :func:`data_dir`, decides it for the command line and the Python API alike
(the default query log, ``RobustAPI(log=None)``, lives under it):

1. ``$ROBUST_API_HOME`` when it is set (and not empty);
2. otherwise the platform's per-user data directory:

   - Linux and other Unix: ``$XDG_DATA_HOME/robust-api`` (an absolute ``XDG_DATA_HOME`` only,
     as the XDG Base Directory specification says), else ``~/.local/share/robust-api``;
   - macOS: ``~/Library/Application Support/robust-api``;
   - Windows: ``%LOCALAPPDATA%\\robust-api``, else ``~\\AppData\\Local\\robust-api``.

Nothing is created here; the query log creates its folder when it first writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["APP_NAME", "HOME_ENV_VAR", "data_dir"]

#: The folder name under the platform's data directory.
APP_NAME = "robust-api"
#: The environment variable that overrides the data directory (tests set it to a temporary folder).
HOME_ENV_VAR = "ROBUST_API_HOME"


def data_dir(environ: Optional[Mapping[str, str]] = None, platform: Optional[str] = None) -> Path:
    """The folder robust-api keeps its files in by default (see the module docstring).

    Args:
        environ: the environment to read (default ``os.environ``).
        platform: a ``sys.platform`` value (default this interpreter's), for tests.

    Returns:
        An absolute path when the home folder is known (``~`` is expanded); it may not exist yet.
    """
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    override = env.get(HOME_ENV_VAR, "").strip()
    if override:
        return Path(os.path.expanduser(override))
    if platform.startswith("win"):
        base = env.get("LOCALAPPDATA", "").strip()
        return (Path(base) if base else Path.home() / "AppData" / "Local") / APP_NAME
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    xdg = env.get("XDG_DATA_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APP_NAME
    return Path.home() / ".local" / "share" / APP_NAME
