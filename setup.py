"""imsrv: an instant-messaging server in Python.

The Cython frame codec in ext/ is optional at build time: if it cannot be compiled the
package installs with the pure-Python twin and says so loudly.  Set IMSRV_REQUIRE_EXT=1
(CI does) to turn a failed build into an error.
"""
import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

REQUIRE_EXT = os.environ.get("IMSRV_REQUIRE_EXT", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing, unless IMSRV_REQUIRE_EXT=1."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing, Cython missing, ...
            self._failed(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc):
        if REQUIRE_EXT:
            raise
        bar = "*" * 72
        sys.stderr.write(
            f"\n{bar}\nWARNING: the imsrv Cython codec could not be built ({exc!r}).\n"
            "imsrv will run on the pure-Python frame codec, which is several times slower.\n"
            f"Set IMSRV_REQUIRE_EXT=1 to make this an error.\n{bar}\n\n"
        )


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXT:
            raise
        sys.stderr.write("WARNING: Cython not installed; building imsrv without its codec extension\n")
        return []
    return cythonize(
        [Extension("imsrv._codec", ["ext/_codec.pyx"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )


setup(
    name="imsrv",
    version="0.1.0",
    description="Instant-messaging server: gevent gateways, Cython framing, Redis + MySQL or embedded SQLite",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["imsrv", "imsrv.*"]),
    # imsrv/web/static: the web chat page (HTML, CSS, JS, SVG) that the WebSocket port serves
    package_data={"imsrv": ["*.toml"], "imsrv.web": ["static/*.*", "static/js/*.js"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "gevent>=23.9,<26",
        "orjson>=3.9,<4",
        "wsproto>=1.2,<2",
        "argon2-cffi>=23.1,<26",
        "tomli>=2.0,<3; python_version<'3.11'",
        "redis>=5,<7",
        "PyMySQL>=1.1,<2",
        "hiredis>=2,<4",
        "supervisor>=4.2,<5",
        # /metrics of every process (Prometheus text format)
        "prometheus_client>=0.17,<1",
        # `imsrv cert`: the self-signed certificate and key for local TLS (imsrv/cli/cert.py)
        "cryptography>=41",
    ],
    extras_require={
        "rapidjson": ["python-rapidjson>=1.10,<2"],
        "hiredis": ["hiredis>=2,<4"],
        "test": [
            "pytest>=7.4,<10",
            "pytest-timeout>=2.1,<3",
            "pytest-benchmark>=4,<6",
            "hypothesis>=6.80,<7",
            "python-rapidjson>=1.10,<2",
            # imsrv bench --peer mosquitto's optional paho client (tests/test_bench_mqtt.py)
            "paho-mqtt>=2,<3",
            # imsrv bench sweep/idle --plot (tests/test_bench_smoke.py checks the SVG)
            "matplotlib>=3.7,<4",
            # the web chat page driven in Debian's chromium through chromedriver
            "selenium>=4.10,<5",
        ],
        # imsrv bench's plots (sweep --plot, idle --plot)
        "bench": ["matplotlib>=3.7,<4"],
    },
    entry_points={"console_scripts": ["imsrv=imsrv.cli.main:main"]},
)
