# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing and
# installs what it needs (idempotent: a stamp records what was installed for which pyproject.toml).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
# What we test on (the package metadata states ranges; these pins are the tested combination).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml Makefile | cksum | cut -d' ' -f1)
FMNIST := /usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS ?= 2

.PHONY: test demo lint docs gallery bench install fashion-mnist clean

$(VPY):
	$(PY) -m venv $(VENV)

$(STAMP): $(VPY) pyproject.toml
	$(PIP) install -q --upgrade pip setuptools wheel 2>/dev/null || true
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q $(TORCH_PINS) -e ".[test,demo,docs]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST (real images, offline): Debian's dataset-fashion-mnist. Tests that need it skip
# cleanly when it cannot be installed (no root / no apt).
fashion-mnist:
	@[ -d $(FMNIST) ] || (command -v apt-get >/dev/null && \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1))) || \
	  echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"

test: install fashion-mnist
	$(VPY) -m pytest

lint: install
	$(VPY) -m ruff check captum_cam_ext tests benchmarks
	$(VPY) -m mypy

demo: install
	$(VPY) -m captum_cam_ext.demo --out out

# The gallery's demo figure and photo panels are regenerated first (about 1.5 CPU-min), so that the
# stored outputs always agree with `make demo`; `make gallery` also remakes the slow all-methods and
# segmentation / detection / ViT panels.
docs: install
	$(VPY) docs/make_gallery.py --only demo
	$(VPY) docs/make_gallery.py --only photos
	$(VPY) -m sphinx -W -q -b html docs docs/_build/html

gallery: install
	$(VPY) docs/make_gallery.py

# make bench: the quick matrix (< 5 min); make bench BENCH_ARGS= for the full one (see benchmarks/results/matrix.md)
BENCH_ARGS ?= --quick
bench: install fashion-mnist
	$(VPY) benchmarks/matrix.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out docs/_build
