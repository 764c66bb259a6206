# imsrv: the two commands are `make run` and `make test` (see README.md).
#
#   make run     create .venv, install imsrv with its Cython codec, start the embedded server
#   make test    install, then run the whole suite (both codec implementations)
#   make bench   codec micro-benchmarks (pytest-benchmark); see bench/RESULTS.md
#   make cluster the distributed set under supervisord (supervisord.conf), local Redis + MySQL
#   make clean   remove build products and the venv

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
STAMP  := $(VENV)/.imsrv-installed
# CI sets IMSRV_REQUIRE_EXT=1 so a codec that failed to build is an error, not a warning.
export IMSRV_REQUIRE_EXT

.PHONY: install run test bench cluster clean

install: $(STAMP)
	@# supervisord.conf keeps its socket, pid file and logs here and cannot create it
	@mkdir -p var/supervisor

$(STAMP): setup.py pyproject.toml ext/_codec.pyx
	@test -x $(PY) || { echo "make: creating virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing build tools and imsrv[test] into $(VENV)"
	$(PIP) install --upgrade pip "setuptools>=64" wheel "Cython>=3.0,<4"
	$(PIP) install --no-build-isolation -e '.[test]'
	@# editable installs keep the package in-tree, so build the extension in place too
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import imsrv.codec as c; print('make: imsrv codec implementation:', c.IMPLEMENTATION)"
	@touch $@

run: install
	$(VENV)/bin/imsrv serve

test: install
	$(PY) tests/run_suite.py

cluster: install
	$(VENV)/bin/supervisord -c supervisord.conf
	@echo "make: supervisord started; .venv/bin/supervisorctl -c supervisord.conf status | shutdown"

bench: install
	$(PY) bench/run.py

clean:
	rm -rf build dist *.egg-info imsrv/*.so ext/*.c $(VENV) .pytest_cache .benchmarks
