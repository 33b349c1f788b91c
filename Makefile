# make serve - set up .venv with the core only (imgclf[cpu]), build the demo model on its built-in demo set
#              (once), serve it on :8000
# make demo  - the same without serving: featurize, train, export, predict new pictures
# make test  - set up .venv with every extra, run make lint, then the whole test suite (system tests included)
# make test-fast - set up .venv and run the unit tests only (pytest -n auto --dist loadfile -m "not system" tests/unit)
# make lint  - ruff, the import-linter layer contracts (pyproject.toml) and mkdocs build --strict (broken links fail)
# make docs  - build the docs site into site/ (mkdocs-material; the CLI, configuration and HTTP references are
#              generated from the code by docs/hooks/reference.py)
# make bench - set up .venv and run the featurizer, service, soak and peers benchmarks
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo needs only the core and TensorFlow; the tests, benchmarks and docs need every extra.
CORE_STAMP := $(VENV)/.imgclf-core-installed
STAMP := $(VENV)/.imgclf-installed
# mkdocs-material's banner about its successor says nothing about this build
export NO_MKDOCS_2_WARNING := 1

.PHONY: install serve demo test test-fast lint docs bench clean fonts browser shells

# Fonts for annotated images (CJK labels need one with those glyphs). Installed only when
# running as root with apt-get and the font is missing; otherwise the CJK test says why it skips.
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc
fonts:
	@if [ ! -f $(CJK_FONT) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-wqy-zenhei fonts-dejavu-core) \
			>/dev/null 2>&1 || echo "note: could not install fonts-wqy-zenhei; CJK annotation test will skip"; \
	fi

# A browser for the upload page's tests (tests/system/test_web_page.py drives it with Playwright, never
# downloading one of its own): Debian's chromium, installed only when running as root with apt-get
# and it is missing; otherwise those tests say why they skip.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt-get) for the web page tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
			>/dev/null 2>&1 || echo "note: could not install chromium; the web page tests will skip"; \
	fi

# The shells whose completion scripts `imgclf completion zsh|fish` writes, so their syntax is checked
# (tests/unit/core/test_cli.py; without them those checks say why they skip).
shells:
	@if ! { command -v zsh && command -v fish; } >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends zsh fish) \
			>/dev/null 2>&1 || echo "note: could not install zsh and fish; their completion checks will skip"; \
	fi

$(CORE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install --quiet -e '.[cpu]'
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[cpu,test,ray,openvino,docs]'
	touch $(STAMP)

install: $(STAMP)

serve: $(CORE_STAMP)
	$(BIN)/imgclf demo --serve

demo: $(CORE_STAMP)
	$(BIN)/imgclf demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mkdocs build --strict --quiet

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

test: lint fonts browser shells
	@# xdist's default distribution: --dist loadfile would run schemathesis's per-operation items (one node id) once
	$(BIN)/python -m pytest -n auto

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile -m "not system" tests/unit

bench: $(STAMP)
	$(BIN)/python -m bench.featurize
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.peers

clean:
	rm -rf $(VENV) bench/out .pytest_cache site
