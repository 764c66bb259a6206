# imsrv: the two commands are `make run` and `make test` (see README.md).
#
#   make run     create .venv, install imsrv with its Cython codec, start the embedded server
#   make test    install imsrv and its test extra, the system packages the tests need
#                (system-packages), then run the whole suite (both codec implementations)
#   make bench   codec micro-benchmarks (pytest-benchmark); see bench/RESULTS.md
#   make cluster the distributed set under supervisord (supervisord.conf), local Redis + MySQL
#   make clean   remove build products and the venv

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
STAMP  := $(VENV)/.imsrv-installed
TEST_STAMP := $(VENV)/.imsrv-test-installed
# Debian packages the test suite starts private instances from (fault tests; the
# Mosquitto and ejabberd peers of imsrv bench, tests/test_bench_*.py), as
# binary:package pairs; system-packages installs those whose binary is missing.  A first
# part starting with / is a file the package installs (a font has no binary): checked to exist
# (Noto Color Emoji: the web page tests' screenshots render emoji).
TEST_SYSTEM_PACKAGES := redis-server:redis-server mariadbd:mariadb-server mariadb-install-db:mariadb-server mosquitto:mosquitto ejabberdctl:ejabberd chromium:chromium chromedriver:chromium-driver /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf:fonts-noto-color-emoji
# CI sets IMSRV_REQUIRE_EXT=1 so a codec that failed to build is an error, not a warning.
export IMSRV_REQUIRE_EXT

.PHONY: install test-install system-packages run test bench cluster clean

install: $(STAMP)
	@# supervisord.conf keeps its socket, pid file and logs here and cannot create it
	@mkdir -p var/supervisor

$(STAMP): setup.py pyproject.toml ext/_codec.pyx
	@test -x $(PY) || { echo "make: creating virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing build tools and imsrv (what running needs) into $(VENV)"
	$(PIP) install --upgrade pip "setuptools>=64" wheel "Cython>=3.0,<4"
	$(PIP) install --no-build-isolation -e .
	@# editable installs keep the package in-tree, so build the extension in place too
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import imsrv.codec as c; print('make: imsrv codec implementation:', c.IMPLEMENTATION)"
	@touch $@

run: install
	$(VENV)/bin/imsrv serve

# the test extra (pytest, hypothesis, ...): only make test needs it
test-install: install $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) setup.py
	@echo "make: installing imsrv[test] into $(VENV)"
	$(PIP) install --no-build-isolation -e '.[test]'
	@touch $@

# System packages the tests need: installed with apt-get when their binary is missing
# (as root), never from inside a test.  Says what it does; changes nothing when all are there.
system-packages:
	@missing=""; for pair in $(TEST_SYSTEM_PACKAGES); do \
	  bin=$${pair%%:*}; pkg=$${pair#*:}; \
	  case $$bin in /*) test -e $$bin;; *) command -v $$bin >/dev/null 2>&1 || test -x /usr/sbin/$$bin || \
	    test -x /usr/bin/$$bin;; esac || \
	    case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -z "$$missing" ]; then echo "make: system packages for the tests: all present"; exit 0; fi; \
	echo "make: system packages the tests need are missing:$$missing"; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: cannot install them here (needs root and apt-get): install$$missing, then run make test again"; exit 1; fi; \
	echo "make: apt-get install$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y --no-install-recommends $$missing >/dev/null || \
	  { apt-get update >/dev/null && apt-get install -y --no-install-recommends $$missing >/dev/null; } || \
	  { echo "make: apt-get could not install$$missing"; exit 1; }

test: test-install system-packages
	$(PY) tests/run_suite.py

cluster: install
	$(VENV)/bin/supervisord -c supervisord.conf
	@echo "make: supervisord started; .venv/bin/supervisorctl -c supervisord.conf status | shutdown"

bench: test-install
	$(PY) bench/run.py

clean:
	rm -rf build dist *.egg-info imsrv/*.so ext/*.c $(VENV) .pytest_cache .benchmarks
