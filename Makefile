# Thin wrapper over CMake: the README's two commands are `make run` and `make test`.
# Both install missing Debian packages first (apt-get update once, then install).

BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
SHELL      := /bin/bash
PKGS       := cmake make gcc pkg-config bc libck-dev libxml2-dev libcriterion-dev libxxhash-dev

.PHONY: all deps build run test test-asan bench clean format

all: build

deps:
	@missing=""; for p in $(PKGS); do \
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

# The main job: sample files, a server, two clients, verification, a summary.
run: build
	@./apps/run-demo.sh $(BUILD)

# The whole suite. Criterion's per-binary "Synthesis" lines and ctest's summary reach stdout.
test: build
	@./tests/run-suite.sh $(BUILD) $(JOBS)

# The Criterion suite under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: deps
	@cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DENG_ASAN=ON >/dev/null
	@cmake --build $(BUILD_ASAN) -j $(JOBS)
	@ASAN_OPTIONS=handle_segv=0:detect_leaks=1 ./tests/run-suite.sh $(BUILD_ASAN) $(JOBS)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')
