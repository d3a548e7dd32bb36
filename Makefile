# pclc: every user-facing command. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help setup test clean demo plan bench summary audit audit-run table1 table2 table3 table4 table5 figure1 figure2 figure3 gaps all

# Reproduce options: make table1 DATASETS=fmnist PROFILE=quick ATTACKS=fgsm,pgd LAUNCHER=joblib (or pclc_slurm)
DATASETS ?=
ATTACKS  ?=
PROFILE  ?= full
LAUNCHER ?=
EXP_ARGS = profile=$(PROFILE) $(if $(DATASETS),datasets=[$(DATASETS)]) $(if $(ATTACKS),attacks=[$(ATTACKS)])
# One experiment: in this process, or fanned out over its cells with a Hydra launcher, then assembled.
define reproduce
$(if $(LAUNCHER),\
	n=$$($(BIN)/python -m pclc.reproduce experiment=$(1) $(EXP_ARGS) stage=count logger=none | tail -n 1) && \
	$(BIN)/python -m pclc.reproduce -m experiment=$(1) $(EXP_ARGS) stage=cell "cell=range(0,$$n)" hydra/launcher=$(LAUNCHER) && \
	$(BIN)/python -m pclc.reproduce experiment=$(1) $(EXP_ARGS) stage=tables,\
	$(BIN)/python -m pclc.reproduce experiment=$(1) $(EXP_ARGS))
endef

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install pclc with pinned versions (constraints.txt)

test: $(STAMP) ## Set up if needed, then run the test suite
	$(BIN)/python -m pytest -q

clean: ## Remove .venv and caches (keeps data/ and runs/)
	rm -rf $(VENV) .pytest_cache *.egg-info

demo: $(STAMP) ## Quick Fashion-MNIST slice of Table 1 (CE vs PC+LC, FGSM/PGD), paper numbers beside ours
	$(BIN)/python -m pclc.reproduce experiment=demo
	@sed -n '/^| attack/,$$p' results/quick/demo.md

plan: $(STAMP) ## What an experiment needs and its predicted time: make plan EXP=table1
	$(BIN)/python -m pclc.reproduce experiment=$(or $(EXP),all) $(EXP_ARGS) plan=true logger=none

table1: $(STAMP) ## Table 1: white-box attacks, CE vs PC+LC -> results/table1.{md,csv}
	$(call reproduce,table1)
table2: $(STAMP) ## Table 2: CE vs GCE vs PC+LC (C&W 1000 iterations) -> results/table2.*
	$(call reproduce,table2)
table3: $(STAMP) ## Table 3: black-box (transfer PGD/MIM from the substitute, SPSA) -> results/table3.*
	$(call reproduce,table3)
table4: $(STAMP) ## Table 4: CIFAR-100 and Tiny ImageNet -> results/table4.*
	$(call reproduce,table4)
table5: $(STAMP) ## Table 5: with adversarial training -> results/table5.*
	$(call reproduce,table5)
figure1: $(STAMP) ## Figure 1: t-SNE, ResNet-56 on CIFAR-10, CE vs PC+LC -> results/figures/
	$(call reproduce,figure1)
figure2: $(STAMP) ## Figure 2: where newly successful FGSM/MIM attacks land -> results/figures/
	$(call reproduce,figure2)
figure3: $(STAMP) ## Figure 3: t-SNE with FGSM successes, LeNet-5 on MNIST -> results/figures/
	$(call reproduce,figure3)
gaps: $(STAMP) ## Mean probability gaps, ResNet-56, CE vs PC+LC -> results/gaps.md
	$(call reproduce,gaps)
all: $(STAMP) ## Every table and figure
	$(call reproduce,all)
summary: $(STAMP) ## Every paper cell in one file: results/SUMMARY.md and figures/summary-scatter.png
	$(BIN)/python -m pclc.summary

bench: $(STAMP) ## Benchmark our pipeline vs a reference-style one -> results/bench-<device>.{md,json}
	$(BIN)/python scripts/bench.py
audit: $(STAMP) ## Robustness audit of every Table 1/5 model (default DATASETS=fmnist) -> results/audit.{md,csv,png}
	$(call reproduce,audit)
audit-run: $(STAMP) ## Audit one run: make audit-run ARGS="audit.run=<key>" (or dataset=.. model=.. loss=..)
	$(BIN)/python -m pclc.audit $(ARGS)
