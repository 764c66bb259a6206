"""The `imsrv` command.

Embedded (one process, SQLite):
    imsrv serve [--config F] [--data DIR] [--host H] [--api-port N] [--gateway-port N] [--ws-port N]
                [--metrics-port N]       (/healthz and /metrics; every daemon has --metrics-port too)
                                         (--host 0.0.0.0 to listen beyond 127.0.0.1)
Distributed (Redis + MySQL; see supervisord.conf):
    imsrv initdb [--config F]            create/migrate the database (idempotent)
    imsrv gateway --id ID --port N [--ws-port N]   a gateway daemon (and its WebSocket port)
    imsrv forwarder --id ID              a forwarder daemon
    imsrv api --port N                   an API daemon
Tools:
    imsrv config                         print the documented sample configuration
    imsrv call OP [key=value ...]        one API request (values are JSON, else strings;
                                         --tls [--ca-file F] over TLS)
    imsrv cert [--force]                 write a self-signed imsrv.crt and imsrv.key ([tls])
    imsrv admin users|ban|unban|kick|stats   the admin ops (admin key: $IMSRV_ADMIN_KEY)
    imsrv chat ...                       the terminal chat client
    imsrv bench SCENARIO ...             load generator: pairs, group, idle, storm (imsrv/bench)
"""
import argparse
import json
import os
import socket
import struct
import sys

from .. import __version__, config, logs, runtime


def cmd_serve(args):
    overrides = {
        ("server", "data_dir"): args.data,
        ("server", "host"): args.host,
        ("server", "api_port"): args.api_port,
        ("server", "gateway_port"): args.gateway_port,
        ("server", "websocket_port"): args.ws_port,
        ("server", "metrics_port"): args.metrics_port,
    }
    try:
        cfg = config.load(args.config or os.environ.get("IMSRV_CONFIG") or None, overrides=overrides)
        logs.configure(cfg.server.log_level, fmt=cfg.server.log_format)
    except (config.ConfigError, ValueError) as exc:
        print(f"imsrv: {exc}", file=sys.stderr)
        return 2
    from ..servers.listener import ListenError
    from ..servers.embedded import EmbeddedServer

    runtime.assert_patched("imsrv serve")   # main() patched first thing
    try:
        server = EmbeddedServer(cfg)   # binds every port before it makes the data directory
    except ListenError as exc:
        print(f"imsrv: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"imsrv: cannot start: {exc}", file=sys.stderr)
        return 1
    server.serve_forever()
    return 0


def _load_config(args, overrides=None):
    try:
        cfg = config.load(args.config or os.environ.get("IMSRV_CONFIG") or None, overrides=overrides)
        logs.configure(cfg.server.log_level, fmt=cfg.server.log_format)
        return cfg
    except (config.ConfigError, ValueError) as exc:
        print(f"imsrv: {exc}", file=sys.stderr)
        return None


def _own_metrics_port(cfg, role, args):
    """A daemon's own /healthz and /metrics port becomes its server.metrics_port: its
    --metrics-port, else derived from server.metrics_port and --index
    (imsrv/servers/metrics.py daemon_metrics_port)."""
    from ..servers.metrics import daemon_metrics_port
    cfg.server.metrics_port = daemon_metrics_port(cfg, role, args.index, args.metrics_port)


def _run_daemon(name, make):
    """Start one daemon of the distributed deployment.  main() monkey-patched first thing
    (imsrv.runtime): redis-py and PyMySQL yield to other greenlets on I/O."""
    from ..servers.listener import ListenError
    runtime.assert_patched(f"imsrv {name}")
    try:
        daemon = make()   # binds its port first
    except ListenError as exc:
        print(f"imsrv: {exc}", file=sys.stderr)
        return 1
    try:
        daemon.serve_forever()
    except OSError as exc:
        print(f"imsrv: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_gateway(args):
    cfg = _load_config(args, {("server", "host"): args.host})
    if cfg is None:
        return 2
    _own_metrics_port(cfg, "gateway", args)
    from ..servers.gateway_daemon import GatewayProcess
    port = args.port if args.port is not None else cfg.server.gateway_port + 10 * args.index
    ws_port = args.ws_port
    if ws_port is None:   # websocket_port 0: no WebSocket ports
        ws_port = cfg.server.websocket_port + 10 * args.index if cfg.server.websocket_port else 0
    return _run_daemon("gateway", lambda: GatewayProcess(cfg, args.id, port, ws_port))


def cmd_forwarder(args):
    cfg = _load_config(args)
    if cfg is None:
        return 2
    _own_metrics_port(cfg, "forwarder", args)
    from ..servers.forwarder_daemon import ForwarderProcess
    return _run_daemon("forwarder", lambda: ForwarderProcess(cfg, args.id))


def cmd_api_daemon(args):
    cfg = _load_config(args, {("server", "host"): args.host})
    if cfg is None:
        return 2
    _own_metrics_port(cfg, "api", args)
    from ..servers.api_daemon import ApiProcess
    port = args.port if args.port is not None else cfg.server.api_port
    return _run_daemon("api", lambda: ApiProcess(cfg, port))


def cmd_initdb(args):
    cfg = _load_config(args)
    if cfg is None:
        return 2
    from ..servers.daemon import DEFAULT_DATABASE_URL
    url = cfg.server.database_url or DEFAULT_DATABASE_URL
    try:
        if url.startswith("mysql"):
            from ..backends.mysql import initdb
            print(initdb(url))
        else:
            from ..backends import open_store
            store = open_store(url)
            store.migrate()
            print(f"schema version {store.schema_version()} at {url}")
            store.close()
    except Exception as exc:
        print(f"imsrv initdb: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_config(args):
    with open(config.sample_path(), encoding="utf-8") as f:
        sys.stdout.write(f.read())
    return 0


def _value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_call(args):
    """One request to the API service over a short connection, reply printed as JSON."""
    req = {"op": args.op, "id": 1}
    for kv in args.fields:
        if "=" not in kv:
            print(f"imsrv call: expected key=value, got {kv!r}", file=sys.stderr)
            return 2
        k, v = kv.split("=", 1)
        req[k] = _value(v)
    host, _, port = args.api.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        with _call_socket(args, host, int(port)) as s:
            payload = json.dumps(req).encode()
            s.sendall(struct.pack(">I", len(payload)) + payload)
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the reply")
                buf += chunk
    except (OSError, ValueError) as exc:
        print(f"imsrv call: cannot reach the API at {args.api}: {exc}", file=sys.stderr)
        return 1
    n = struct.unpack(">I", buf[:4])[0]
    reply = json.loads(buf[4:4 + n])
    print(json.dumps(reply, ensure_ascii=False))
    return 0 if reply.get("op") == "ok" else 1


def _call_socket(args, host, port):
    """The connection of `imsrv call`: TLS with --tls / --ca-file (host name checked)."""
    sock = socket.create_connection((host, port), timeout=args.timeout)
    if not (args.tls or args.ca_file):
        return sock
    import ssl
    try:
        ctx = ssl.create_default_context(cafile=args.ca_file)
        return ctx.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _api_ops_help():
    """The API ops and their fields, from the server's own schemas (so it stays true)."""
    from ..protocol.schemas import API_SCHEMAS, NO_TOKEN
    rows = []
    for op, schema in API_SCHEMAS.items():
        fields = [] if op in NO_TOKEN else ["token=TOKEN"]
        for name, (_check, required) in schema.items():
            fields.append(f"{name}=..." if required else f"[{name}=...]")
        rows.append((op, " ".join(fields)))
    width = max(len(op) for op, _ in rows)
    lines = ["API ops (fields in [brackets] are optional; see docs/PROTOCOL.md):"]
    lines += [f"  {op.ljust(width)}  {fields}".rstrip() for op, fields in rows]
    lines += ["", "examples:",
              "  imsrv call register user=alice password=alice-pass1",
              "  imsrv call login user=alice password=alice-pass1",
              "  imsrv call group_create token=TOKEN name=team 'members=[\"bob\"]'"]
    return "\n".join(lines)


def _lazy_epilog(parser, make):
    """Build ``parser``'s epilog only when its help is shown (it imports the core)."""
    format_help = parser.format_help

    def with_epilog():
        parser.epilog = make()
        return format_help()
    parser.format_help = with_epilog


METRICS_PORT_HELP = ("/healthz and /metrics port (default: [server] metrics_port + {offset} + 10 * index;"
                     " 0 = none)")


def build_parser():
    p = argparse.ArgumentParser(prog="imsrv", description="imsrv instant-messaging server")
    p.add_argument("--version", action="version", version=f"imsrv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the embedded all-in-one server (SQLite)")
    s.add_argument("--config", "-c", help="TOML config file (see `imsrv config`)")
    s.add_argument("--data", help="data directory (default ./var)")
    s.add_argument("--host", help="listen address (default 127.0.0.1, this machine only; 0.0.0.0 exposes "
                                  "the server on every IPv4 address)")
    s.add_argument("--api-port", type=int, help="API port (default 7001)")
    s.add_argument("--gateway-port", type=int, help="gateway port (default 7000)")
    s.add_argument("--ws-port", type=int, help="WebSocket gateway port (default 7080, 0 = off)")
    s.add_argument("--metrics-port", type=int, help="/healthz and /metrics port (default 7090, 0 = off)")
    s.set_defaults(fn=cmd_serve)

    g = sub.add_parser("gateway", help="run a gateway daemon (distributed deployment)")
    g.add_argument("--config", "-c", help="TOML config file")
    g.add_argument("--id", required=True, help="gateway id, unique in the deployment (e.g. gw1)")
    g.add_argument("--port", type=int, help="listen port (default: [server] gateway_port + 10 * index)")
    g.add_argument("--ws-port", type=int, help="WebSocket port, /ws and the web chat page (default: [server] "
                                               "websocket_port + 10 * index; 0 = none)")
    g.add_argument("--index", type=int, default=0,
                   help="this gateway's number on the machine, for the default port (supervisord's process_num)")
    g.add_argument("--host", help="listen address (default [server] host, 127.0.0.1)")
    g.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP.format(offset=2))
    g.set_defaults(fn=cmd_gateway)

    f = sub.add_parser("forwarder", help="run a forwarder daemon (distributed deployment)")
    f.add_argument("--config", "-c", help="TOML config file")
    f.add_argument("--id", required=True, help="forwarder id, unique in the deployment (e.g. fw1)")
    f.add_argument("--index", type=int, default=0,
                   help="this forwarder's number on the machine, for the default metrics port (process_num)")
    f.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP.format(offset=3))
    f.set_defaults(fn=cmd_forwarder)

    d = sub.add_parser("api", help="run an API daemon (distributed deployment)")
    d.add_argument("--config", "-c", help="TOML config file")
    d.add_argument("--port", type=int, help="listen port (default: [server] api_port, 7001)")
    d.add_argument("--host", help="listen address (default [server] host, 127.0.0.1)")
    d.add_argument("--index", type=int, default=0,
                   help="this API daemon's number on the machine, for the default metrics port")
    d.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP.format(offset=4))
    d.set_defaults(fn=cmd_api_daemon)

    i = sub.add_parser("initdb", help="create or migrate the database named by database_url "
                                      "(default mysql://root@127.0.0.1:3306/imsrv)")
    i.add_argument("--config", "-c", help="TOML config file")
    i.set_defaults(fn=cmd_initdb)

    c = sub.add_parser("config", help="print the sample configuration with every default")
    c.set_defaults(fn=cmd_config)

    a = sub.add_parser("call", help="send one request to the API service and print the reply",
                       usage="imsrv call [--api HOST:PORT] [--timeout S] OP [KEY=VALUE ...]",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Send one request to the API service and print the reply as JSON "
                                   "(exit status 0 for ok, 1 for an error reply).")
    a.add_argument("op", metavar="OP", help="the API op (listed below)")
    a.add_argument("fields", nargs="*", default=[], metavar="KEY=VALUE",
                   help="request fields; a value is parsed as JSON when it is JSON, else taken as a string")
    a.add_argument("--api", default=os.environ.get("IMSRV_API", "127.0.0.1:7001"), metavar="HOST:PORT",
                   help="the API service (default $IMSRV_API or 127.0.0.1:7001)")
    a.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait (default 10)")
    from .tlsopts import add_tls_options
    add_tls_options(a)
    a.set_defaults(fn=cmd_call)
    _lazy_epilog(a, _api_ops_help)

    from . import chat
    chat.add_parser(sub)
    from . import cert
    cert.add_parser(sub)
    from . import admin
    admin.add_parser(sub)
    from ..bench import cli as bench_cli
    bench_cli.add_parser(sub)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in runtime.SERVER_COMMANDS:
        # the one place a server process is patched, before the parser imports anything
        # (ssl, redis, pymysql: their sockets must be gevent's); see imsrv/runtime.py
        runtime.patch()
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
