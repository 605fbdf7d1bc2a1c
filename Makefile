# Two commands a newcomer needs:  make demo  and  make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: install assets browser demo results ceiling frontier architectures curve sweeps test lint format bench clean

install: $(STAMP)

# Offline demo corpus sources (docs: clip_ping.experiments.demo_corpus), fetched once into .assets/
# by package name: emoji sets from npm, clip-art from Debian (unpacked, not installed).
ASSETS := .assets
ASSETS_STAMP := $(ASSETS)/.complete
NPM_ASSETS := emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 \
	openmoji@17.0.0 emojibase-data@17.0.0
DEB_ASSETS := openclipart-svg openclipart-png
# apt-get install/download, refreshing the package lists only when that fails without them.
apt = apt-get $(1) || (apt-get update && apt-get $(1))

assets: $(ASSETS_STAMP)

$(ASSETS_STAMP):
	command -v npm >/dev/null || $(call apt,install -y --no-install-recommends npm)
	ldconfig -p | grep -q libcairo.so.2 || $(call apt,install -y --no-install-recommends libcairo2)
	rm -rf $(ASSETS)/debs && mkdir -p $(ASSETS)/npm $(ASSETS)/debs
	npm install --prefix $(ASSETS)/npm --no-audit --no-fund --ignore-scripts $(NPM_ASSETS)
	cd $(ASSETS)/debs && $(call apt,download $(DEB_ASSETS))
	for deb in $(ASSETS)/debs/*.deb; do dpkg-deb -x $$deb $(ASSETS)/openclipart || exit 1; done
	rm -rf $(ASSETS)/debs
	touch $@

# torch goes first and pinned: an unpinned torch (asked for by any dependency)
# would pull a multi-GB CUDA build.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

demo: $(STAMP) $(ASSETS_STAMP)
	$(BIN)/clip-ping demo

# docs/results.md: CLIP and CLIP-PING over 5 seeds on the test sets, CLIP-PING's settings over
# 3 seeds on val (the command that wrote the page). Finished runs are reused.
results: $(STAMP) $(ASSETS_STAMP)
	$(BIN)/clip-ping results --seeds 5 --sweep-seeds 3

# docs/results.md's ceiling section: the frozen teachers with trained heads over 5 seeds, and
# each student's fraction of it (its recipe: the ceiling sweep on val, make sweeps).
ceiling: $(STAMP) $(ASSETS_STAMP)
	$(BIN)/clip-ping results --ceiling --seeds 5

# docs/results.md's accuracy-cost section: the costs measured here, the accuracy of the
# finished runs (make results, make architectures, make ceiling); trains nothing.
frontier: $(STAMP)
	$(BIN)/python benchmarks/model_costs.py --out docs/data/model_costs.json
	$(BIN)/clip-ping results --frontier

# docs/results.md's per-student section: a ViT, a ConvNeXt and a MobileViT, lr chosen on val.
architectures: $(STAMP) $(ASSETS_STAMP)
	$(BIN)/clip-ping results --architectures --seeds 3

# docs/results.md's data-efficiency section: CLIP and CLIP-PING on 10/25/50/100% of the groups.
# 3 seeds fit in an hour on 2 cores; the page shows CURVE_SEEDS=5, the headline's seeds.
CURVE_SEEDS ?= 3
curve: $(STAMP) $(ASSETS_STAMP)
	$(BIN)/clip-ping results --curve --seeds $(CURVE_SEEDS)

# docs/method.md's sweep tables on val: the recipe (both methods), CLIP-PING's settings, the
# teachers' ceiling's recipe, then the guidance family's settings beside CLIP and CLIP-PING.
sweeps: $(STAMP) $(ASSETS_STAMP)
	$(BIN)/clip-ping results --sweep recipe --sweep-seeds 2
	$(BIN)/clip-ping results --sweep method --sweep-seeds 3
	$(BIN)/clip-ping results --sweep ceiling --sweep-seeds 3
	$(BIN)/clip-ping results --sweep family --sweep-seeds 3

# The explorer's browser tests (tests/explore): Debian's chromium and its chromium-driver,
# driven by selenium (requirements.txt); no browser build is downloaded from anywhere else.
BROWSER_DEBS := chromium chromium-driver
browser:
	(command -v chromium && command -v chromedriver) >/dev/null || \
		$(call apt,install -y --no-install-recommends $(BROWSER_DEBS))

test: $(STAMP) $(ASSETS_STAMP) browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
