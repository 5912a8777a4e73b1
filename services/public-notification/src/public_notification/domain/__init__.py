"""public-notification's pure rules, one module per job: CAP alerts (alerts), official statements
and their release clocks (statements), the rumor register (rumors) and when the service holds
nothing more for an incident (settlement). No I/O, no framework."""

from __future__ import annotations

from .alerts import *  # noqa: F403
from .alerts import __all__ as _alerts
from .cap import *  # noqa: F403
from .cap import __all__ as _cap
from .channels import *  # noqa: F403
from .channels import __all__ as _channels
from .rumors import *  # noqa: F403
from .rumors import __all__ as _rumors
from .settlement import *  # noqa: F403
from .settlement import __all__ as _settlement
from .statements import *  # noqa: F403
from .statements import __all__ as _statements
from .targeting import *  # noqa: F403
from .targeting import __all__ as _targeting

SERVICE = "public-notification"

__all__ = ["SERVICE", *_alerts, *_cap, *_channels, *_statements, *_rumors, *_settlement, *_targeting]
