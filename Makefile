# rtcam — build, demo and test from a fresh Debian 12 / Raspberry Pi OS machine.
#
#   make demo    install what is missing, build, and run rtcam with built-in defaults
#   make test    install what the tests need, then run every test
#   make bench   benchmarks (not part of make test)
#   make cross TARGET=aarch64-unknown-linux-gnu   cross-build for a board (or armv7-unknown-linux-gnueabihf)
#   make deb TARGET=…                             the .deb for that board (target/TARGET/debian/)
#   make deploy HOST=user@board TARGET=…          install it on a board over ssh and show the service
#   make packaging-files                          regenerate the conffile, man pages and completions the .deb ships
#   make image [BOARD=rpi4] [SUITE=trixie]        a flashable Raspberry Pi image with rtcam (target/image/)
#   make image BASE=raspios-lite-arm64.img.xz     rtcam put into a Raspberry Pi OS Lite image, offline

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Runtime and build packages: GStreamer with the plugins rtcam's pipelines use (v4l2 and the
# JPEG decoder in -good, x264 in -ugly, openh264 in -bad, the clock overlay in -x), and what
# the Rust crates build against (pkg-config, libclang for the v4l bindings, GStreamer's RTSP
# server library for the RTSP door).
BUILD_PKGS := build-essential pkg-config libclang-dev curl ca-certificates \
	libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-x
# Tests also run a mosquitto server, headless Chromium and Firefox ESR, check the systemd unit, and boot a
# Debian kernel in qemu with the vivid camera driver (tests/it/vivid.rs: busybox for the guest,
# cpio and kmod to build its initramfs). Network tests build NATs and links in namespaces
# (iproute2, nftables), with coturn as their STUN and TURN server (tests/it/nat.rs); the lossy
# link (tests/it/lossy.rs) is a router VM from the same kernel, whose sch_netem the host may
# lack, with iproute2's tc copied into its busybox initramfs. `promtool check metrics` checks
# /metrics (tests/it/metrics.rs); Debian ships promtool in the prometheus package. ffmpeg is an
# RTSP client nobody here wrote (tests/it/rtsp.rs); Janus's streaming plugin pulls that door and
# fans it out in the benchmark harness's smoke run.
TEST_PKGS := $(BUILD_PKGS) mosquitto mosquitto-clients chromium firefox-esr systemd iproute2 nftables coturn \
	qemu-system-x86 busybox-static cpio kmod binutils prometheus janus ffmpeg
# Cross-building for boards (docs/boards.md): Debian's cross compilers and the target's C
# library and kernel headers; packaging checks; the emulated board (qemu, cpio, depmod).
CROSS_PKGS := gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
	binutils lintian qemu-system-arm cpio kmod
CROSS_TARGETS := aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
TARGET ?= aarch64-unknown-linux-gnu
# release for what goes on boards; make test builds the cheaper board-test profile (Cargo.toml).
PROFILE ?= release
DEB_ARCH = $(if $(findstring aarch64,$(TARGET)),arm64,armhf)

# The Raspberry Pi image (docs/boards.md, "A ready-to-flash image"): mmdebstrap with qemu-user
# (binfmt_misc) for the arm64 root's maintainer scripts; dosfstools, mtools, e2fsprogs and
# sfdisk (fdisk) assemble the partitions without loop devices; bmap-tools and xz for flashing.
# Putting rtcam into an image loop-mounts it (root). The image boots in qemu-system-aarch64
# (make test-image), with ssh into it and rtcam's viewer test dependencies on the host.
IMAGE_PKGS := mmdebstrap qemu-user-static binfmt-support arch-test debian-archive-keyring dosfstools mtools \
	e2fsprogs fdisk bmap-tools xz-utils qemu-system-arm openssh-client
# One image boots every 64-bit board Debian's raspi-firmware and arm64 kernel support; BOARD
# names the board it is for and is checked against that list.
IMAGE_BOARDS := rpi3 rpi4 rpi400 rpi-zero-2w
BOARD ?= rpi4
SUITE ?= trixie

# Benchmarks compare against the Janus streaming plugin on the same machine, and measure
# latency in headless Chromium too (with the browser tests' playwright-core).
BENCH_PKGS := $(BUILD_PKGS) janus chromium

MQTT_JS := web/vendor/mqtt.min.js

.PHONY: all build demo test deps test-deps cross-deps cross deb deploy deploy-host test-board test-board-nat test-packages web bench packaging-files clean image image-deps test-image

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
	@# The prometheus package is there for promtool, janus for the fan-out through it (the
	@# benchmark harness starts its own); neither server is needed.
	@for s in prometheus janus; do \
		if [ -d /run/systemd/system ] && systemctl is-active -q $$s 2>/dev/null; then \
			$(SUDO) systemctl disable --now $$s; fi; done
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

# Toolchains for boards: apt packages, rustup targets, cargo-deb; each only when missing.
cross-deps:
	$(call apt_install,$(CROSS_PKGS))
	@installed=$$(rustup target list --installed); for t in $(CROSS_TARGETS); do \
		grep -qx $$t <<<"$$installed" || rustup target add $$t; done
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked

cross: deps cross-deps web
	cross/build.sh $(TARGET) $(PROFILE)

deb: cross
	$(CARGO) deb --no-build --target $(TARGET) --profile $(PROFILE) -o target/$(TARGET)/debian/
	@ls -l target/$(TARGET)/debian/rtcam_*_$(DEB_ARCH).deb

# Copies the package to the board, installs it (which enables and starts the service) and
# shows the service's state. HOST is anything ssh accepts; sudo on the board asks as usual.
# apt installs the local .deb with dpkg and fetches the GStreamer packages it depends on.
deploy: deploy-host deb
	deb=$$(ls -t target/$(TARGET)/debian/rtcam_*_$(DEB_ARCH).deb | head -1); \
	scp "$$deb" $(HOST):/tmp/rtcam.deb && \
	ssh -t $(HOST) 'sudo apt-get install -y /tmp/rtcam.deb && rm /tmp/rtcam.deb && sleep 2 && systemctl status --no-pager rtcam'

deploy-host:
	@[ -n "$(HOST)" ] || { echo "usage: make deploy HOST=user@board [TARGET=$(TARGET)]"; exit 2; }

image-deps:
	$(call apt_install,$(IMAGE_PKGS))

# BASE: a Raspberry Pi OS Lite (64-bit) image to put rtcam into instead of building one.
image: image-deps
	@case " $(IMAGE_BOARDS) " in *" $(BOARD) "*) ;; *) echo "make image: no image for BOARD=$(BOARD); boards: $(IMAGE_BOARDS)"; exit 2 ;; esac
	$(MAKE) --no-print-directory deb TARGET=aarch64-unknown-linux-gnu PROFILE=release
	deb=$$(ls -t target/aarch64-unknown-linux-gnu/debian/rtcam_*_arm64.deb | head -1); \
	SUITE=$(SUITE) image/make.sh "$$deb" $(BASE)

# The image booted in qemu (tests/it/image.rs): the Debian base (tests/image/base.sh, cached for
# the day), the board-test .deb put in as make image does, two boots under the real systemd.
# make test runs it last, with the base built in the background meanwhile.
test-image: test-deps cross-deps image-deps web
	tests/image/prepare.sh
	$(CARGO) test --test it -- --ignored --nocapture image::

# The emulated arm64 board (tests/board/run.sh): both cross builds capture from vivid in qemu.
test-board: cross-deps web
	tests/board/run.sh $(CROSS_TARGETS)

# A board behind NAT (tests/it/board_nat.rs): the emulated arm64 board reaches a broker and a
# TURN server on this machine through qemu's user-mode network; a viewer here watches via the relay.
test-board-nat: test-deps cross-deps web
	$(CARGO) test --test it -- --ignored --nocapture board_nat::

# The .deb of each board target, from the board-test builds test-board made.
test-packages: cross-deps
	@for t in $(CROSS_TARGETS); do \
		arch=$$(case $$t in aarch64*) echo arm64;; *) echo armhf;; esac); \
		$(CARGO) deb --fast --no-build --target $$t --profile board-test -o target/$$t/debian/ >/dev/null && \
		tests/package/check.sh target/$$t/debian/rtcam_*_$$arch.deb $$arch && \
		tests/image/suite.sh target/$$t/debian/rtcam_*_$$arch.deb || exit 1; \
	done

# What the .deb ships that rtcam generates from its CLI and example configuration: the conffile
# with every key commented out, manual pages, shell completions. Kept in the tree so a cross
# build packages them without running the board's binary; tests/it/cli.rs fails when they are stale.
packaging-files:
	$(CARGO) build --bin rtcam
	rtcam=$$($(CARGO) metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')/debug/rtcam; \
	$$rtcam config example --commented > packaging/rtcam.toml && \
	rm -f packaging/man/*.1 && $$rtcam man packaging/man && \
	$$rtcam completions bash > packaging/completions/rtcam.bash && \
	$$rtcam completions zsh > packaging/completions/_rtcam && \
	$$rtcam completions fish > packaging/completions/rtcam.fish

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

# The integration tests are one binary (tests/it/), run two at a time. These modules measure
# timing, memory or a VM under load, or hold network namespaces and Chromium for minutes; they
# run after the rest, one at a time.
SOLO_TESTS := soak:: lossy:: vivid:: hostile:: nat::

# Formatting and lints first (clippy with the tests' features, which their dev-dependency on
# rtcam turns on), so a slip fails in seconds rather than after the long tests.
test: test-deps cross-deps image-deps web
	@# The image test's Debian base takes a quarter of an hour of one core (emulated dpkg): it
	@# builds at idle priority while the other tests run, and the image test boots it last.
	tests/image/base.sh --start
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --all-targets -- $(addprefix --skip ,$(SOLO_TESTS))
	$(CARGO) test --test it -- --test-threads=1 $(SOLO_TESTS)
	node --test web/
	$(MAKE) --no-print-directory test-board
	$(MAKE) --no-print-directory test-board-nat
	$(MAKE) --no-print-directory test-packages
	@# A few seconds of the benchmark harness (2 viewers) against the debug rtcam, so it keeps
	@# working, with Janus's streaming plugin pulling rtcam's RTSP door and fanning it out
	@# (rtcam must see exactly one client); the figures come only from `make bench`.
	$(CARGO) build --bin rtcam
	$(CARGO) run -p rtcam-bench -- --smoke --janus
	$(MAKE) --no-print-directory test-image

# Minutes of measuring on a release build; rewrites the results in docs/benchmarks.md and the
# plots in docs/bench/. Run it on a quiet machine: the load average is recorded with the figures.
bench: web
	$(call apt_install,$(BENCH_PKGS))
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	$(CARGO) build --release -p rtcam -p rtcam-bench
	./target/release/rtcam-bench --janus --chromium --doors --ports

clean:
	$(CARGO) clean
	rm -rf web/node_modules web/vendor tests/browser/node_modules
