"""The ten-line SDK example in docs/CLIENT.md (and the package docstring, and the README
once the section is copied there) runs as written against a fresh server."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

import imsrv.client

from .harness import REPO, in_thread

pytestmark = pytest.mark.timeout(60)

MARKER = "<!-- sdk-example"


def docs_example():
    text = (REPO / "docs" / "CLIENT.md").read_text()
    start = text.index(MARKER)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    return m.group(1)


def test_example_is_ten_lines_and_the_same_everywhere():
    code = docs_example()
    lines = code.rstrip("\n").split("\n")
    assert len(lines) <= 10, lines
    assert textwrap.indent(code.rstrip("\n"), "    ") in imsrv.client.__doc__
    readme = REPO / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if "from imsrv.client import Client" in text:
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
        assert code in blocks, "README's SDK example differs from docs/CLIENT.md"


def test_example_runs_as_written(server_factory, tmp_path):
    srv = server_factory(name="docs")
    env = dict(os.environ, IMSRV_API=srv.api)
    script = tmp_path / "example.py"
    script.write_text(docs_example())
    r = in_thread(lambda: subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                         timeout=40, env=env, cwd=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "carol -> dave: hello dave (mid 1)\n"
