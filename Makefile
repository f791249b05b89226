# `make book` builds the website into _build/html; `make test` runs unit tests and notebook checks.
# Each creates .venv and installs everything on first use (and again when requirements.txt changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test notebooks lab check-site pdf clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W --keep-going
	@echo "Open _build/html/index.html in a browser."

test: $(STAMP)
	$(BIN)/python -m pytest

# Open JupyterLab on the chapters (sets up .venv on first use). LAB_ARGS passes options to it
# (e.g. LAB_ARGS="--no-browser --port=8899"); as root (a container) it adds --allow-root.
LAB_ARGS ?=
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Check the built site in headless Chromium (math, console, requests, overflow, navigation, search, links);
# screenshots of the chapters go to _build/screenshots/. PAGES picks pages, e.g. PAGES="notebooks/03_elbo book/*".
PAGES ?=
check-site: $(STAMP)
	$(BIN)/python tools/check_site.py $(PAGES)

# The whole book as one PDF, offline: the single-page build printed by the system Chromium -> _build/pdf/book.pdf
pdf: $(STAMP)
	$(BIN)/jupyter-book build . --builder singlehtml -W --keep-going
	$(BIN)/python tools/book_pdf.py

# Re-execute every chapter in place (fresh kernel, outputs saved), e.g. after changing vae_utils.
notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 notebooks/*.ipynb

clean:
	rm -rf _build
