"""`tokencli serve`: options parsed here, everything else in serving.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tokencli.cli.base import app, exit_codes, location_of, warn
from tokencli.domain.errors import InvalidRequestError
from tokencli.http.keys import ADMIN_KEY_ENV, VALIDATE_KEY_ENV


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help=f"File holding the admin key (else ${ADMIN_KEY_ENV}). With a key, issuing, "
            "purging, /app/tokens and /metrics need 'Authorization: Bearer KEY'.",
        ),
    ] = None,
    validate_key_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help=f"File holding a key that validation needs (else ${VALIDATE_KEY_ENV}); "
            "the admin key works too. Without one, validation is open.",
        ),
    ] = None,
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host with no admin key.")
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(metavar="FILE", help="PEM certificate chain: serve HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(metavar="FILE", help="PEM private key of --tls-cert.")
    ] = None,
    access_log: Annotated[
        str,
        typer.Option(metavar="text|json|off", help="Access log format on stderr."),
    ] = "text",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No access log.")] = False,
    metrics: Annotated[bool, typer.Option(help="Answer GET /metrics (Prometheus).")] = True,
    max_connections: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Open connections at most; more wait in the backlog. "
            "Default: what the open-file limit allows.",
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CIDR",
            help="A reverse proxy (address or network) whose X-Forwarded-For or Forwarded "
            "header names the client in the access log; repeatable. Others' are ignored.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            help="Worker threads answering requests; 0 answers them on the event loop "
            "(fastest on SQLite, see docs/benchmarks.md).",
        ),
    ] = 0,
) -> None:
    """Serve the token API over HTTP(S): the original service's endpoints and more.

    Prints 'listening on http://HOST:PORT' to stderr once bound; one access-log line per
    request follows, with token secrets redacted. SIGINT or SIGTERM stops it cleanly;
    SIGHUP re-reads the key files.

    \b
    Examples:
      tokencli serve
      tokencli serve --port 0 --access-log json
      tokencli serve --trusted-proxy 127.0.0.1 --trusted-proxy 10.0.0.0/8
      tokencli serve --host 0.0.0.0 --admin-key-file /etc/tokencli/admin.key \\
          --tls-cert cert.pem --tls-key key.pem
      curl -X POST http://127.0.0.1:8000/app/token -H 'Content-Type: application/json'
    """
    from tokencli.http.forwarded import parse_networks
    from tokencli.http.keys import KeySource, key_file_is_shared, load_keys
    from tokencli.server import serving
    from tokencli.server.config import (
        Limits,
        ServerConfig,
        descriptor_budget,
        is_loopback,
        tls_context,
    )

    with exit_codes():
        if access_log not in ("text", "json", "off"):
            raise InvalidRequestError("--access-log is text, json or off")
        if (tls_cert is None) != (tls_key is None):
            raise InvalidRequestError("give --tls-cert and --tls-key together")
        source = KeySource(admin_key_file, validate_key_file)
        keys = load_keys(source)
        for key_file in (admin_key_file, validate_key_file):
            if key_file is not None and key_file_is_shared(key_file):
                warn(f"key file {key_file} is readable by others; chmod 600 it")
        public = not is_loopback(host)
        if keys.admin is None and public and not allow_unauthenticated:
            raise InvalidRequestError(
                f"refusing to listen on {host} with no admin key: set ${ADMIN_KEY_ENV} or "
                "--admin-key-file, or pass --allow-unauthenticated"
            )
        tls = None
        if tls_cert is not None and tls_key is not None:
            try:
                tls = tls_context(str(tls_cert), str(tls_key))
            except ValueError as error:
                raise InvalidRequestError(str(error)) from None
        elif public and (keys.admin is not None or keys.validate is not None):
            warn(
                f"serving plain HTTP on {host}: keys and tokens cross the network in "
                "cleartext unless a proxy in front terminates TLS (--tls-cert/--tls-key)"
            )
        try:
            trusted_proxies = parse_networks(trusted_proxy or ())
        except ValueError as error:
            raise InvalidRequestError(str(error)) from None
        budget = descriptor_budget()
        limits = Limits(max_connections=min(max_connections or budget, budget))
        config = ServerConfig(
            host=host,
            port=port,
            limits=limits,
            workers=workers,
            tls=tls,
            access_log=None if quiet or access_log == "off" else sys.stderr,
            access_log_format="text" if access_log == "off" else access_log,
            metrics=metrics,
            trusted_proxies=trusted_proxies,
        )
        code = serving.run(location_of(ctx), config, keys, source)
    raise typer.Exit(code)
