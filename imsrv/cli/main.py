"""The `imsrv` command.

    imsrv serve [--config F] [--data DIR] [--host H] [--api-port N] [--gateway-port N] [--ws-port N]
    imsrv config                         print the documented sample configuration
    imsrv api OP [key=value ...]         one API request (values are JSON, else strings)
"""
import argparse
import json
import os
import socket
import struct
import sys

from .. import __version__, config, logs


def cmd_serve(args):
    overrides = {
        ("server", "data_dir"): args.data,
        ("server", "host"): args.host,
        ("server", "api_port"): args.api_port,
        ("server", "gateway_port"): args.gateway_port,
        ("server", "websocket_port"): args.ws_port,
    }
    try:
        cfg = config.load(args.config, overrides=overrides)
        logs.configure(cfg.server.log_level)
    except (config.ConfigError, ValueError) as exc:
        print(f"imsrv: {exc}", file=sys.stderr)
        return 2
    from ..servers.embedded import EmbeddedServer

    try:
        server = EmbeddedServer(cfg)
    except OSError as exc:
        print(f"imsrv: cannot listen on {cfg.server.host} (api port {cfg.server.api_port}, "
              f"gateway port {cfg.server.gateway_port}): {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        server.serve_forever()
    except OSError as exc:
        print(f"imsrv: cannot listen on {cfg.server.host} (api port {cfg.server.api_port}, "
              f"gateway port {cfg.server.gateway_port}): {exc.strerror or exc}", file=sys.stderr)
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


def cmd_api(args):
    """One request to the API service over a short connection, reply printed as JSON."""
    req = {"op": args.op, "id": 1}
    for kv in args.fields:
        if "=" not in kv:
            print(f"imsrv api: expected key=value, got {kv!r}", file=sys.stderr)
            return 2
        k, v = kv.split("=", 1)
        req[k] = _value(v)
    host, _, port = args.api.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=args.timeout) as s:
            payload = json.dumps(req).encode()
            s.sendall(struct.pack(">I", len(payload)) + payload)
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the reply")
                buf += chunk
    except (OSError, ValueError) as exc:
        print(f"imsrv api: cannot reach the API at {args.api}: {exc}", file=sys.stderr)
        return 1
    n = struct.unpack(">I", buf[:4])[0]
    reply = json.loads(buf[4:4 + n])
    print(json.dumps(reply, ensure_ascii=False))
    return 0 if reply.get("op") == "ok" else 1


def build_parser():
    p = argparse.ArgumentParser(prog="imsrv", description="imsrv instant-messaging server")
    p.add_argument("--version", action="version", version=f"imsrv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the embedded all-in-one server (SQLite)")
    s.add_argument("--config", "-c", help="TOML config file (see `imsrv config`)")
    s.add_argument("--data", help="data directory (default ./var)")
    s.add_argument("--host", help="listen address (default 0.0.0.0)")
    s.add_argument("--api-port", type=int, help="API port (default 7001)")
    s.add_argument("--gateway-port", type=int, help="gateway port (default 7000)")
    s.add_argument("--ws-port", type=int, help="WebSocket gateway port (default 7080, 0 = off)")
    s.set_defaults(fn=cmd_serve)

    c = sub.add_parser("config", help="print the sample configuration with every default")
    c.set_defaults(fn=cmd_config)

    a = sub.add_parser("api", help="send one request to the API service and print the reply")
    a.add_argument("op")
    a.add_argument("fields", nargs="*", help="key=value (value parsed as JSON when it is JSON)")
    a.add_argument("--api", default=os.environ.get("IMSRV_API", "127.0.0.1:7001"), help="host:port")
    a.add_argument("--timeout", type=float, default=10.0)
    a.set_defaults(fn=cmd_api)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
