# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where models live: the one home of the model layout, read by the controller (the fleet schema, placement and
payload tell a container its model path before the model is synced) and by the hosts (model_sync puts it there).

``<models_root>/<name>`` is a model; the default models root is ``DEFAULT_MODELS_ROOT``; ``name`` must be usable as
one directory name. A local checkpoint is allowed when its path lies under an allowed directory (``is_under``).
Pure: no filesystem access (``store.py`` is the filesystem side).
"""

from __future__ import annotations

import os

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

DEFAULT_MODELS_ROOT = "/var/lib/gpufleet/models"


def check_name(name: str) -> str:
    """``name`` when it is usable as a directory name under the models root; GpufleetError (bad_args) if not."""
    if not name or name in (".", "..") or "/" in name or name.startswith(".") or "\0" in name:
        raise GpufleetError(
            f"model name {name!r} is not usable as a directory name: use letters, digits, '-', '_' or '.', "
            "not starting with '.' and without '/'",
            failure_class="bad_args",
        )
    return name


def model_path(models_root: str | None, name: str) -> str:
    """Where model_sync puts model ``name`` under ``models_root`` (its ``path`` result): ``<models_root>/<name>``."""
    return os.path.join(os.path.abspath(models_root or DEFAULT_MODELS_ROOT), check_name(name))


def is_under(path: str, base: str) -> bool:
    """Whether ``path`` is ``base`` or lies below it (compared as written: resolve symlinks first where they
    matter)."""
    return path == base or path.startswith(base.rstrip("/") + "/")
