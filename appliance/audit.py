"""The access audit's reading of Synapse's log, shared with the appliance.

The code is images/files/usr/local/lib/outband/access_audit.py (stdlib only), which the image
installs beside the case recorder: the recorder on the appliance and `invoke audit` here turn the
same journal lines into the same events. This module loads that one file; nothing is copied.
"""

from __future__ import annotations

import importlib.util
import sys

from appliance.config import IMAGES

_NAME = "outband_access_audit"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, IMAGES / "files/usr/local/lib/outband/access_audit.py")
    assert _spec and _spec.loader
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module  # before it runs: its dataclasses look their module up
    _spec.loader.exec_module(_module)
_shared = sys.modules[_NAME]

Event = _shared.Event
Reader = _shared.Reader
events = _shared.events
journal_lines = _shared.journal_lines
name_devices = _shared.name_devices
request_events = _shared.request_events
