# Thin wrapper around CMake.  `make demo` and `make check` work on a fresh
# Debian 12 machine: they install missing packages first (when root).
# iproute2: `ip netns` for test_recovery_netns.py (a veth between two namespaces).

BUILD ?= build
JOBS ?= $(shell nproc)
# Tests run two at a time: an integration test spends most of its time
# waiting on its guests' states, and none depends on timing or on having a
# core to itself (they assert decisions; measured: all 52 pass with -j 2 on
# 2 cores under a load of 10).  CTEST_JOBS=1 runs them one by one.
CTEST_JOBS ?= 2
DEB_PKGS := build-essential cmake ninja-build pkg-config python3 clang clang-format \
            libjansson-dev libzstd-dev zlib1g-dev liblz4-dev libcmocka-dev libcairo2-dev \
            libfontconfig-dev iproute2 libgnutls28-dev gnutls-bin
# `make bench` only: its charts (bench/charts.py) and rendering them to look at.
# Debian's matplotlib is Debian's python3's: the bench runs with that one.
BENCH_DEB_PKGS := python3-matplotlib librsvg2-bin
BENCH_PYTHON ?= /usr/bin/python3

.PHONY: all deps build demo check check-asan check-tsan format-check fuzz bench install clean

all: build

deps:
	@missing=""; for p in $(DEB_PKGS) $(EXTRA_DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing packages:$$missing (run as root or install them)"; exit 1; \
	  fi; \
	fi

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/livemig demo

check: build
	cd $(BUILD) && ctest --output-on-failure -j $(CTEST_JOBS)

# Installs the CLI, include/livemig.h, liblivemig.a, liblivemig.so (with its
# soname links) and livemig.pc under $(DESTDIR)$(PREFIX) (cmake/install.cmake).
# PREFIX is what livemig.pc names; DESTDIR only stages (packaging), e.g.
#   make install PREFIX=/usr DESTDIR=/tmp/stage
PREFIX ?= /usr/local
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

# Sanitizer builds of the unit, fuzz-replay and integration tests.  The
# integration tests (tests/integration/lmtest.py) see the TSan build, scale
# their time bounds and pass TSAN_OPTIONS on to every process they start,
# adding a log_path of their own: a report from any process fails the test.
check-asan: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang \
	  -DLM_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(CTEST_JOBS) $(CTEST_ARGS)

check-tsan: deps
	cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang \
	  -DLM_SANITIZE=thread
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp \
	  ctest --output-on-failure -j $(CTEST_JOBS) $(CTEST_ARGS)

# The sources as .clang-format says (clang-format 14, Debian 12).
format-check: deps
	@files=$$(find src include tools examples -name '*.[ch]' | LC_ALL=C sort); \
	echo "clang-format --dry-run -Werror: $$(printf '%s\n' $$files | wc -l) files"; \
	clang-format --dry-run -Werror $$files

# libFuzzer targets (clang).  Run one with e.g.
#   ./build-fuzz/fuzz_stream -max_total_time=60 tests/fuzz/corpus/fuzz_stream
fuzz: deps
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DLM_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS)

bench: build
	@$(MAKE) --no-print-directory deps EXTRA_DEB_PKGS="$(BENCH_DEB_PKGS)"
	$(BENCH_PYTHON) bench/bench.py --livemig ./$(BUILD)/livemig --charts docs/img/bench

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
