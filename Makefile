# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Each installs what it needs first: the system FluidSynth library, Chromium with its driver and npm
# (apollo web and its browser tests), and the Python packages.
PYTHON ?= python3
# torch is pinned so that pip takes the CPU wheel where one is provided, not the newest CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench

install:
	@ldconfig -p | grep -q libfluidsynth || { \
	  echo "Installing the FluidSynth library (libfluidsynth3)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends libfluidsynth3; }
	@{ command -v chromium && command -v chromedriver && command -v npm; } >/dev/null || { \
	  echo "Installing Chromium and its driver (chromium, chromium-driver) and npm for apollo web's tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver \
	    $$(command -v npm >/dev/null || echo npm); }
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) -m apollo corpus export bach-chorales midi/bach-chorales
	$(PYTHON) -m apollo preprocess midi/bach-chorales -o datasets/bach-chorales --overwrite
	$(PYTHON) -m apollo train --data datasets/bach-chorales --minutes 2 --batch-size 32 --no-progress
	$(PYTHON) -m apollo generate --checkpoint bundled --instrument violin --seed 0 --wav --png out/demo.mid
	@echo "Listen to out/demo.wav (MIDI: out/demo.mid, picture: out/demo.png); the short training run is in runs/."

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/roundtrip.py
	$(PYTHON) bench/preprocess.py
	$(PYTHON) bench/train.py
	$(PYTHON) bench/render.py
	$(PYTHON) bench/startup.py
