# rtcam — build, demo and test from a fresh Debian 12 / Raspberry Pi OS machine.
#
#   make demo    install what is missing, build, and run rtcam with built-in defaults
#   make test    install what the tests need, then run every test
#   make bench   benchmarks (not part of make test)

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Runtime and build packages: GStreamer with the plugins rtcam's pipelines use (v4l2 and the
# JPEG decoder in -good, x264 in -ugly, openh264 in -bad, the clock overlay in -x), and what
# the Rust crates build against (pkg-config, libclang for the v4l bindings).
BUILD_PKGS := build-essential pkg-config libclang-dev curl ca-certificates \
	libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-x
# Tests also run a mosquitto server and headless Chromium, and boot a Debian kernel in qemu
# with the vivid camera driver (tests/vivid.rs: busybox for the guest, cpio and kmod to build
# its initramfs).
TEST_PKGS := $(BUILD_PKGS) mosquitto mosquitto-clients chromium \
	qemu-system-x86 busybox-static cpio kmod binutils

# Benchmarks compare against the Janus streaming plugin on the same machine, and measure
# latency in headless Chromium too (with the browser tests' playwright-core).
BENCH_PKGS := $(BUILD_PKGS) janus chromium

MQTT_JS := web/vendor/mqtt.min.js

.PHONY: all build demo test deps test-deps web bench clean

all: build

# Installs only what is missing, so a second run costs nothing.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# npm bundles mqtt.js for the viewer page; a Node.js from elsewhere (with its own npm) is fine.
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	@command -v cargo >/dev/null || { echo "Rust is missing: install it with https://rustup.rs (curl ... | sh), then run make again"; exit 1; }
endef

deps:
	$(call apt_install,$(BUILD_PKGS))

test-deps:
	$(call apt_install,$(TEST_PKGS))
	@# Debian starts mosquitto as a service on install; the tests run their own on free ports,
	@# and the demo's embedded broker wants port 1883, so the packaged service stays off.
	@if [ -d /run/systemd/system ] && systemctl is-active -q mosquitto 2>/dev/null; then \
		$(SUDO) systemctl disable --now mosquitto; fi
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

# mqtt.js for the viewer page comes from npm at build time and is embedded in the binary.
$(MQTT_JS): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p web/vendor && cp web/node_modules/mqtt/dist/mqtt.min.js $(MQTT_JS)

web: $(MQTT_JS)

build: deps web
	$(CARGO) build --release

demo: build
	@echo "Starting rtcam (Ctrl-C to stop)…"
	./target/release/rtcam

test: test-deps web
	$(CARGO) test --all-targets
	node --test web/protocol.test.mjs
	@# A few seconds of the benchmark harness (2 viewers) against the debug rtcam, so it keeps
	@# working; the figures come only from `make bench`.
	$(CARGO) build --bin rtcam
	$(CARGO) run -p rtcam-bench -- --smoke

# Minutes of measuring on a release build; rewrites the results in docs/benchmarks.md and the
# plots in docs/bench/. Run it on a quiet machine: the load average is recorded with the figures.
bench: web
	$(call apt_install,$(BENCH_PKGS))
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	$(CARGO) build --release -p rtcam -p rtcam-bench
	./target/release/rtcam-bench --janus --chromium

clean:
	$(CARGO) clean
	rm -rf web/node_modules web/vendor tests/browser/node_modules
