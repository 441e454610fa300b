# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the two HAProxy guards write alike: the gateway's admin guard in front of vllm-router (``config.py``) and the
replica guard in front of sleep-mode replicas on a GPU host (``replica_guard.py``).

``head()`` is the configuration's first lines (who manages it, ``global``, the ``defaults`` of an HTTP proxy);
``listen_address()`` is an address as a ``bind`` line writes it; ``section_name()`` a deployment's or replica's name
as a frontend or backend name may carry it. What each guard passes or refuses stays in its own file.
"""

from __future__ import annotations

import re

_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")


def head(comment: str, timeout_s: int) -> list[str]:
    """The lines before the frontends: ``# comment``, an empty ``global`` (maxconn and threads: HAProxy's own, from
    its file-descriptor limit and the CPUs) and the ``defaults`` of an HTTP proxy whose client and server timeouts
    are ``timeout_s`` seconds (above the longest generation or stream it carries: a held request is not cut);
    connecting takes 5 s at most, a request's headers and an idle keep-alive 60 s."""
    return [
        f"# {comment}",
        "global",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        f"    timeout client {int(timeout_s)}s",
        f"    timeout server {int(timeout_s)}s",
        "    timeout http-request 60s",
        "    timeout http-keep-alive 60s",
        "",
    ]


def listen_address(address: str) -> str:
    """``address`` as a ``bind`` line writes it: an IPv6 address in brackets."""
    return f"[{address}]" if ":" in address else address


def section_name(name: str) -> str:
    """A name as a frontend or backend name may carry it: what is not a letter, digit, ``_``, ``.`` or ``-`` is ``_``."""
    return _NAME_RE.sub("_", name)
