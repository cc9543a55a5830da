# Two commands for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both install what they need: system packages (Xvfb for a headless screen, Debian's
# docker-compose to validate the compose file) and a local virtual environment in .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= demo-output
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SYSTEM_PACKAGES := xvfb xauth libgl1 libglu1-mesa libegl1 libxkbcommon-x11-0 \
                   libxcb-cursor0 fonts-dejavu-core docker-compose python3-venv dcm2niix
# Run under a virtual screen unless there is a real one.
XRUN   := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1280x1024x24")

.PHONY: demo demo-model test system venv tools lint benchmark clean

demo: system venv
	$(XRUN) $(BIN)/rtserver demo --out $(OUT)

# Regenerate the demo decoder shipped in models/ (deterministic; see models/README.md).
demo-model: venv
	$(BIN)/python -m rtserver.train.demo_model

test: system venv tools
	$(BIN)/ruff check rtserver feedback_display tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(XRUN) $(BIN)/python -m pytest -ra

benchmark: venv
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/motion.py
	$(BIN)/python benchmarks/decoder.py cost

lint: venv
	$(BIN)/ruff check rtserver feedback_display tests benchmarks
	$(BIN)/lint-imports --no-cache

system: .stamp-system
.stamp-system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[display,test]'
	@touch $@

# npm's bids-validator (the field's own checker of the BIDS datasets this project writes),
# installed locally from tools/package-lock.json; Node.js comes from Debian if missing.
tools: tools/node_modules/.installed
tools/node_modules/.installed: tools/package.json tools/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }
	cd tools && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

clean:
	rm -rf $(VENV) .stamp-system $(OUT) .pytest_cache .ruff_cache tools/node_modules
