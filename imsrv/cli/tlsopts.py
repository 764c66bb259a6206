"""The TLS options of the commands that connect to a server (`imsrv call`, `imsrv chat`,
`imsrv admin`):
``--tls`` and ``--ca-file FILE``, read back as ``args.tls`` and ``args.ca_file``."""
import argparse

TLS_HELP = ("connect with TLS (the server's certificate and host name are checked against the "
            "system's CAs, or --ca-file)")
CA_FILE_HELP = "trust the CA certificate(s) in FILE, e.g. the imsrv.crt of `imsrv cert` (implies --tls)"


def add_tls_options(parser, suppress=False):
    """Add ``--tls`` (``args.tls``: bool, default False) and ``--ca-file FILE``
    (``args.ca_file``: the path, default None; it implies TLS) to ``parser``: what
    imsrv.client.network.tls_context(args.tls, args.ca_file) takes.  ``suppress``: no
    defaults (argparse.SUPPRESS), for a sub-command's parser repeating options of its
    parent, so that an option left out there keeps the parent's value."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--tls", action="store_true", help=TLS_HELP, **default)
    parser.add_argument("--ca-file", metavar="FILE", help=CA_FILE_HELP, **default)
