VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install demo demo-mixture test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned to the CPU build that satisfies pyproject.toml's torch>=2.2: installed by the package's
	@# dependencies alone, pip would pull the default build from PyPI, several GB of CUDA libraries
	$(PY) -m pip install -q torch==2.13.0
	@# the video extra (imageio, imageio-ffmpeg) too, so that the test of --video out.mp4 runs
	$(PY) -m pip install -q -e '.[test,video]'
	@# headless Chromium renders the HTML report in a test; its test is skipped where apt cannot install it
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "chromium not installed: its test will be skipped"
	touch $@

demo: install
	$(VENV)/bin/poegen generate "a red ball on a blue box" --out demo.png

demo-mixture: install
	$(PY) scripts/demo.py --out demo_mixture.png

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) scripts/bench_engine.py
	$(PY) scripts/bench_batching.py

clean:
	rm -rf $(VENV) build *.egg-info
