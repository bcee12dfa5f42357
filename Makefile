# Mnemosyne: `make run` starts a local cluster, `make test` runs every test.
# Both install what is missing first (Debian packages via apt-get, as root).

CARGO_TARGET_DIR ?= $(HOME)/.cache/mnemosyne/target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release
export MNEMO_BIN_DIR := $(BIN)

# Crash points (the `fail` crate) are compiled into the binaries the tests and
# the chaos harness run; they stay inert unless armed (FAILPOINTS, or the
# status server with --enable-test-controls). Build and test use the same
# features, so nothing (RocksDB above all) is compiled twice.
FEATURES := --features mnemo-node/failpoints,mnemo-pd/failpoints

APT_PACKAGES := clang libclang-dev protobuf-compiler iproute2 iptables curl etcd-server prometheus \
	docker-compose busybox-static jq binutils

.PHONY: deps build run test images compose-test validate-k8s bench bench-regions bench-idle bench-compare bench-profile bench-micro chaos lint fmt clean-data

# make chaos DURATION=1800 SEED=7 NEMESIS=all,crash-point,compound WORKLOAD=all:
# a Jepsen-style run of mnemo-chaos (5 nodes in network namespaces, faults
# from NEMESIS, workloads from WORKLOAD); results, report.html and the data
# directory go to chaos-results/<seed>-<time>/.
DURATION ?= 1800
SEED ?= 7
NEMESIS ?= all,crash-point,compound
WORKLOAD ?= all

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo >/dev/null || { echo "cargo is missing: install a Rust toolchain (rustup)"; exit 1; }
	@command -v docker >/dev/null || { echo "installing docker.io"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }

build: deps
	cargo build --release --workspace --bins $(FEATURES)

run: build
	scripts/run-local.sh

# Every Rust test, then the container deployment end to end (compose-test).
test: build
	cargo test --release --workspace $(FEATURES) -- --test-threads 2
	scripts/compose-test.sh

# Container images (FROM scratch + the binaries and the libraries they
# link), built locally: mnemosyne/pd:dev, mnemosyne/node:dev, mnemosyne/prometheus:dev.
images: build
	scripts/build-images.sh

# deploy/docker-compose.yml end to end: images, 3 PD + 3 nodes + Prometheus,
# client operations through a container, a node stopped and healed, teardown.
compose-test: build
	scripts/compose-test.sh

# deploy/k8s/ against the Kubernetes API schemas (kubernetes-validate, strict).
validate-k8s: deps
	scripts/validate-k8s.sh

bench: build
	$(BIN)/mnemo-bench --pd 127.0.0.1:2379 --op put --clients 32 --duration 10
	$(BIN)/mnemo-bench --pd 127.0.0.1:2379 --op get --clients 32 --duration 10

# 1 region vs >= 64 regions (put/get), and an idle node with ~1,000 region peers.
bench-regions: build
	scripts/bench-regions.sh

# make bench-idle REGIONS=10000: CPU and RSS of idle nodes holding REGIONS peers each.
bench-idle: build
	scripts/bench-idle.sh

# Mnemosyne vs a 3-member etcd vs in-process RocksDB, alternating rounds;
# DURATION=, ROUNDS=, CLIENTS=, KEYS=, WORKLOADS=, REGIONS= (see the script).
bench-compare: build
	scripts/bench-compare.sh

# perf record -g of node 1 under load; REGIONS=, WORKLOAD=, CLIENTS= (see the script).
bench-profile: build
	scripts/bench-profile.sh

# Criterion micro-benchmarks of the hot paths, and PD's memory at 1,000,000 regions.
bench-micro: build
	cargo bench --workspace $(FEATURES)

chaos: build
	$(BIN)/mnemo-chaos --duration $(DURATION) --seed $(SEED) --nemesis $(NEMESIS) --workload $(WORKLOAD)

lint: deps
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets $(FEATURES) -- -D warnings

fmt:
	cargo fmt --all

clean-data:
	rm -rf data
