"""A bench harness, not part of the tool: script.py with Defender's rate limits scaled down.

    scaled_script.py WINDOW_SECONDS DIVISOR [script.py arguments...]

Defender's documented limits (import 30 per 60 s, ...) never bind on a 10,000-indicator load
(20 imports fit one window), so a row measured with them says nothing about how close the tool
runs to them. This wrapper gives the tool a window of WINDOW_SECONDS and each operation's limit
divided by DIVISOR (`scaled_limits`), the same scale bench/run.py gives the Defender stand-in,
then runs `script.main` in this process. It patches the names the tool reads them by:
`constants.DEFENDER_REQUESTS_PER_MINUTE`, and `WINDOW_SECONDS` in ms_client and in
defender_client (which imported it by name).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import constants


def scaled_limits(divisor: int) -> dict[str, int]:
    """Each Defender operation's calls per window, the documented limit divided by `divisor`."""
    return {name: max(1, math.ceil(limit / divisor)) for name, limit in constants.DEFENDER_REQUESTS_PER_MINUTE.items()}


def main(argv: list[str]) -> int:
    window, divisor, *arguments = argv
    constants.DEFENDER_REQUESTS_PER_MINUTE = scaled_limits(int(divisor))
    import defender_client
    import ms_client
    import script

    for module in (ms_client, defender_client):  # defender_client holds its own name for it
        vars(module)["WINDOW_SECONDS"] = float(window)
    return script.main(arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
