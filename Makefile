# Ferrite: `make help` lists the targets. `make test` is what CI runs.
GO        ?= go
BIN       := $(CURDIR)/bin
EPHEMERAL := $(CURDIR)/build/ephemeral
MIRROR    := $(CURDIR)/build/mirror
PROGRAMS  := ./regiond/cmd/regiond ./rackd/cmd/rackd ./regiond/cmd/ferrite

.DEFAULT_GOAL := help
.PHONY: help deps build test lint generate demo ephemeral mirror

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install the Debian packages that builds, tests and the demo need (as root; only what is missing)
	.ci/install-deps

build: ## build regiond, rackd and the ferrite CLI into bin/
	$(GO) build -o $(BIN)/ $(PROGRAMS)

ephemeral: ## build the ephemeral kernel and initramfs with the agent into build/ephemeral/
	ephemeral/build.sh $(EPHEMERAL)

mirror: build ephemeral ## write the ephemeral image as a simplestreams mirror into build/mirror (for ferrite images import)
	$(BIN)/ferrite images mirror --no-region --ephemeral $(EPHEMERAL) --to $(MIRROR)

test: deps build ephemeral ## run every test, end-to-end QEMU boots included (needs root)
	FERRITE_BIN=$(BIN) FERRITE_EPHEMERAL_DIR=$(EPHEMERAL) $(GO) test -race -timeout 30m ./...

lint: ## go vet and staticcheck
	$(GO) vet ./...
	$(GO) tool -modfile=tools/lint.mod staticcheck ./...

generate: ## rebuild the protobuf code with buf and the pinned local plugins
	$(GO) tool -modfile=tools/buf.mod buf lint
	$(GO) tool -modfile=tools/buf.mod buf generate

demo: deps build ephemeral ## boot one VM that enlists into a region on embedded PostgreSQL (needs root)
	$(GO) run ./pkg/lab/cmd/ferrite-demo --bin $(BIN) --ephemeral $(EPHEMERAL)
