"""The web chat page's files (imsrv/web/static/), read once into memory.

:func:`load` walks the package's ``static`` directory through importlib.resources (so it
works from a source tree, an installed wheel or an editable install) and returns
``{url path: StaticFile}``: ``/index.html`` is also served at ``/``.  Only those paths
exist: nothing on disk is looked up per request, so no request path can reach another
file.  A file whose extension has no entry in :data:`CONTENT_TYPES` is not served (a
stray file in the directory never goes out with a guessed type).
"""
import hashlib
from importlib import resources

#: extension -> Content-Type of what the page ships
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


class StaticFile:
    """One file: ``body`` (bytes), ``content_type``, ``etag`` (a quoted hash of the body)."""

    __slots__ = ("path", "body", "content_type", "etag")

    def __init__(self, path, body, content_type):
        self.path = path
        self.body = body
        self.content_type = content_type
        self.etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]

    def __repr__(self):
        return f"<StaticFile {self.path} {self.content_type} {len(self.body)} bytes>"


def _content_type(name):
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower()) if dot > 0 else None


def _walk(node, prefix):
    for child in node.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_dir():
            yield from _walk(child, f"{prefix}{child.name}/")
        else:
            yield f"{prefix}{child.name}", child


def load(package="imsrv.web", directory="static"):
    """-> {url path: StaticFile} of every servable file under ``package``/``directory``.
    Raises RuntimeError when the directory or its index.html is missing (a broken install:
    the server must not start serving a page it does not have)."""
    root = resources.files(package).joinpath(directory)
    if not root.is_dir():
        raise RuntimeError(f"the web page's files are missing: {package}/{directory} is not a directory "
                           "(package_data of setup.py)")
    files = {}
    for rel, node in _walk(root, "/"):
        ctype = _content_type(rel)
        if ctype is not None:
            files[rel] = StaticFile(rel, node.read_bytes(), ctype)
    if "/index.html" not in files:
        raise RuntimeError(f"the web page's files are missing: no index.html in {package}/{directory}")
    files["/"] = files["/index.html"]
    return files
