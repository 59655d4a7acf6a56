# workspace-start-operator — developer entry points. See README.md.
SHELL := /bin/bash
WSO_CACHE ?= $(HOME)/.cache/workspace-start-operator
export WSO_CACHE
CRD := crds/workspacestartrequests.coder.com.yaml
CHART_CRD := charts/workspace-start-operator/crds/workspacestartrequests.coder.com.yaml
POLICY_CRD := crds/workspacestartpolicies.coder.com.yaml
CHART_POLICY_CRD := charts/workspace-start-operator/crds/workspacestartpolicies.coder.com.yaml

.PHONY: all build tools node-tools crd test test-node unit demo bench lint image

all: build

## build: compile the operator, coder-sim and envtest
build:
	cargo build --workspace --bins

## tools: build kube-apiserver + etcd and fetch kubectl + helm into $(WSO_CACHE)/bin (once)
tools:
	scripts/control-plane-bins.sh >/dev/null

## node-tools: build kubelet, kube-scheduler, kube-proxy, containerd and the pause image into $(WSO_CACHE)/bin (once)
node-tools:
	scripts/node-bins.sh >/dev/null

## crd: regenerate the CRD from the Rust types (checked in; tests fail on drift)
crd:
	cargo run -q --bin workspace-start-operator -- crd > $(CRD)
	cp $(CRD) $(CHART_CRD)
	cargo run -q --bin workspace-start-operator -- crd workspacestartpolicies > $(POLICY_CRD)
	cp $(POLICY_CRD) $(CHART_POLICY_CRD)

## image: the operator's OCI image without a Docker daemon -> dist/workspace-start-operator-<version>.oci.tar
image:
	scripts/image.sh >/dev/null

## test: every test: unit, simulator contract, control plane, end-to-end, chart, GitOps, image
test: tools image
	cargo test --workspace --no-fail-fast
	scripts/test-chart.sh

## test-node: the chart's image as real pods under a real kubelet + containerd (root; docs/node.md)
test-node: tools node-tools image
	cargo test --test node -- --ignored --nocapture

## unit: every test that needs no control plane: unit tables, property tests, CRD drift, the
## Coder contract fixtures and coder-sim's own tests
unit:
	cargo test --lib --bins --test decide_properties --test crd_drift --test coder_contract --test layout
	cargo test -p coder-sim

## demo: local control plane + coder-sim + operator + sample requests, until Ready
demo: tools
	scripts/demo.sh

## bench: throughput/latency/cost benchmark against the real API server and coder-sim
bench: tools
	scripts/bench.sh

## lint: rustfmt and clippy
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
