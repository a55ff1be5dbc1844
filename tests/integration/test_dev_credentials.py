"""The embedded servers on a shared machine: another local user reaches their ports but gets nothing
(a probe as ``nobody`` read the API keys through PostgreSQL's trusted superuser and listed Redis
keys); a data folder from before the credentials is upgraded in place."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from perseus.devstack import services
from perseus.store import db
from perseus.store.redis_store import make_client

pytestmark = pytest.mark.integration

PSQL = shutil.which("psql")


def as_another_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``nobody`` when we are root (another local user, as in the probe); otherwise as
    ourselves, but with none of the credentials in the environment."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30, env=env, cwd="/")


@pytest_asyncio.fixture
async def credentialed(tmp_path: Path) -> AsyncIterator[tuple[services.Service, services.Service, str]]:
    redis = await services.start_redis(tmp_path / "redis", None, password=services.new_password())
    postgres = await services.start_postgres(tmp_path / "pg", None, scratch=True)
    try:
        url = await services.ensure_database(postgres, "perseus")
        await db.apply_schema(url)
        await db.apply_sql(url, db.DEMO_DATA_PATH)
        yield redis, postgres, url
    finally:
        postgres.stop()
        redis.stop()


def psql(url: str) -> subprocess.CompletedProcess[str]:
    assert PSQL, "psql is needed to probe as another user"
    return as_another_user([PSQL, url, "-w", "-At", "-c", "select key from api_keys"])


async def test_another_local_user_is_refused_by_both_servers(
    credentialed: tuple[services.Service, services.Service, str],
) -> None:
    redis, postgres, url = credentialed
    # The superuser over TCP: refused outright, whatever the password.
    superuser = psql(f"postgresql://postgres@127.0.0.1:{postgres.port}/perseus")
    assert superuser.returncode != 0 and "pg_hba.conf rejects connection" in superuser.stderr, superuser
    # The application role without its password.
    role = psql(f"postgresql://{services.PG_APP_ROLE}@127.0.0.1:{postgres.port}/perseus")
    assert role.returncode != 0 and "password" in role.stderr, role
    assert "-" not in role.stdout  # no key (a UUID) was printed
    # The superuser's socket folder is closed to others.
    assert postgres.socket_dir is not None and postgres.socket_dir.stat().st_mode & 0o077 == 0
    # Redis: a raw command without AUTH is refused.
    raw = as_another_user(
        [
            "bash",
            "-c",
            f'exec 3<>/dev/tcp/127.0.0.1/{redis.port}; printf "KEYS *\\r\\n" >&3; head -c 7 <&3',
        ]
    )
    assert raw.stdout.startswith("-NOAUTH"), raw

    # With the credentials Perseus holds, both answer; the role is no superuser.
    conn = await db.connect(url)
    async with conn:
        row = await (
            await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ).fetchone()
        assert row == {"rolsuper": False}
        assert await (await conn.execute("SELECT count(*) AS n FROM api_keys")).fetchone() is not None
    client = make_client(services.redis_url(redis))
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    # The password is in a 0600 config file, never on the command line other users can read.
    assert redis.proc is not None and redis.password is not None
    assert not any(redis.password in str(arg) for arg in redis.proc.args)  # type: ignore[union-attr]
    assert (Path(redis.log_path).parent / "valkey.conf").stat().st_mode & 0o077 == 0


async def test_a_data_folder_from_before_the_credentials_is_upgraded_in_place(tmp_path: Path) -> None:
    """Before: trust for everyone over TCP, and the tables owned by the superuser."""
    data = tmp_path / "pg"
    old = await services.start_postgres(data, None)
    try:
        home = old.relocated_data or data
        admin = await db.connect(services.admin_url(old))
        async with admin:
            await admin.execute("CREATE DATABASE perseus")
        await db.apply_schema(services.admin_url(old, "perseus"))  # as the superuser did
        await db.apply_sql(services.admin_url(old, "perseus"), db.DEMO_DATA_PATH)
        (home / "data" / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    finally:
        old.stop()
    upgraded = await services.start_postgres(data, None, password=services.new_password())
    try:
        assert "trust" not in (home / "data" / "pg_hba.conf").read_text().split("reject")[-1]
        url = await services.ensure_database(upgraded, "perseus")
        await db.apply_schema(url)  # the application role now owns what the schema alters
        conn = await db.connect(url)
        async with conn:
            rows = await (await conn.execute("SELECT count(*) AS n FROM api_keys")).fetchone()
            assert rows is not None
            owners = await (
                await conn.execute(
                    "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace"
                )
            ).fetchall()
            assert owners == [{"owner": services.PG_APP_ROLE}]
        refused = psql(f"postgresql://postgres@127.0.0.1:{upgraded.port}/perseus")
        assert refused.returncode != 0 and "rejects" in refused.stderr, refused
    finally:
        upgraded.stop()
        if old.relocated_data is not None:
            shutil.rmtree(old.relocated_data, ignore_errors=True)
