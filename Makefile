# Thin wrapper over CMake: the README's two commands are `make run` and `make test`.
# Both install missing Debian packages first (apt-get update once, then install).

BUILD      ?= build
BUILD_ASAN ?= build-asan
FUZZ_SECONDS ?= 30
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
SHELL      := /bin/bash
PKGS       := cmake make gcc pkg-config bc clang libclang-rt-14-dev libck-dev libxml2-dev \
              libcriterion-dev libxxhash-dev help2man spin libnng-dev

.PHONY: all deps install-pkgs build install run test test-quick test-asan fuzz bench clean format

all: build

deps:
	@$(MAKE) --no-print-directory install-pkgs P="$(PKGS)"

# Install whichever of the packages P are missing (apt-get update once, then install).
install-pkgs:
	@missing=""; for p in $(P); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "== installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# The library (shared and static), its headers, pkg-config file and CMake package, the programs
# and their man pages, under PREFIX (docs/API.md "Installing").
PREFIX ?= /usr/local
install: build
	@cmake --install $(BUILD) --prefix $(PREFIX)

# The main job: sample files, a server, two clients, verification, a summary.
run: build
	@./apps/run-demo.sh $(BUILD)

# The whole suite. Criterion's per-binary "Synthesis" lines and ctest's summary reach stdout.
test: build
	@BUILD=$(BUILD) BUILD_ASAN=$(BUILD_ASAN) JOBS=$(JOBS) ./tests/test-all.sh

# Only the normal build's suites (quicker while developing).
test-quick: build
	@./tests/run-suite.sh $(BUILD) $(JOBS)

# engine-bench --quick with its reference rows (Boost.Interprocess needs libboost-dev and g++;
# the report's plots need gnuplot). Writes out/bench.json and out/bench/index.html.
BENCH_PKGS := libboost-dev g++ gnuplot-nox
bench: deps
	@$(MAKE) --no-print-directory install-pkgs P="$(BENCH_PKGS)"
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target engine-bench arena-bench
	@mkdir -p out && $(BUILD)/bin/engine-bench --quick --json out/bench.json --report out/bench

# The libFuzzer harnesses for FUZZ_SECONDS each.
fuzz: deps
	@./fuzz/run-fuzzers.sh $(FUZZ_SECONDS)

# The Criterion suite under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: deps
	@cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DENG_ASAN=ON >/dev/null
	@cmake --build $(BUILD_ASAN) -j $(JOBS)
	@ASAN_OPTIONS=handle_segv=0:detect_leaks=1 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ./tests/run-suite.sh $(BUILD_ASAN) $(JOBS)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) build-fuzz

format:
	clang-format -i $$(git ls-files '*.c' '*.h')
