# make demo  - set up .venv and run the main job on its built-in demo set
# make test  - set up .venv and run the whole test suite
# make bench - set up .venv and run the featurizer benchmark
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imgclf-installed

.PHONY: install demo test bench clean fonts

# Fonts for annotated images (CJK labels need one with those glyphs). Installed only when
# running as root with apt-get and the font is missing; otherwise the CJK test says why it skips.
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc
fonts:
	@if [ ! -f $(CJK_FONT) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-wqy-zenhei fonts-dejavu-core) \
			>/dev/null 2>&1 || echo "note: could not install fonts-wqy-zenhei; CJK annotation test will skip"; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/imgclf demo

test: $(STAMP) fonts
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/featurize.py

clean:
	rm -rf $(VENV) bench/out .pytest_cache
