# moat - the two commands are `make run` and `make test` (see README.md).
# Meson and Ninja do the building; this file only names the steps.

BUILD      ?= build
TEST_BUILD ?= build-test
CONF       ?=
MOATD_ARGS  = $(if $(CONF),-c $(CONF),)

.PHONY: all deps build run test unit bench-accept bench fuzz clean help

all: build

help:
	@echo "make run           install packages, build, run moatd on the built-in configuration"
	@echo "make test          install packages, build with ASan+UBSan, run unit and integration tests"
	@echo "make bench-accept  durable acceptance benchmark against Postfix"
	@echo "make bench         end-to-end relay benchmark against Postfix"
	@echo "make fuzz          build the configuration parser's fuzz target (clang)"
	@echo "make clean         remove build directories"

deps:
	@sh scripts/install-deps.sh run

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=release -Dtests=false

build: deps $(BUILD)/build.ninja
	@ninja -C $(BUILD)

# moatd drops to the user "moat" when started as root: create it.
run: build
	@if [ "$$(id -u)" -eq 0 ] && ! getent passwd moat >/dev/null; then \
	  useradd --system --no-create-home --home-dir /nonexistent \
	    --shell /usr/sbin/nologin moat && echo "created system user moat"; \
	fi
	./$(BUILD)/moatd $(MOATD_ARGS)

$(TEST_BUILD)/build.ninja:
	meson setup $(TEST_BUILD) --buildtype=debug -Dwerror=true \
	  -Db_sanitize=address,undefined -Dtests=true

test:
	@sh scripts/install-deps.sh test
	@$(MAKE) --no-print-directory $(TEST_BUILD)/build.ninja
	@ninja -C $(TEST_BUILD)
	@sh scripts/check-layers.sh
	@sh scripts/run-tests.sh $(TEST_BUILD)

unit:
	@$(MAKE) --no-print-directory $(TEST_BUILD)/build.ninja
	@ninja -C $(TEST_BUILD)
	@MOAT_SKIP_INTEGRATION=1 sh scripts/run-tests.sh $(TEST_BUILD)

bench-accept: build
	@sh scripts/install-deps.sh bench
	bash bench/bench-accept.sh $(BUILD)/moatd

bench: build
	@sh scripts/install-deps.sh bench
	bash bench/bench-relay.sh $(BUILD)/moatd

fuzz:
	CC=clang meson setup build-fuzz -Dfuzz=true -Dtests=false \
	  -Db_sanitize=address,undefined -Db_lundef=false
	ninja -C build-fuzz

clean:
	rm -rf $(BUILD) $(TEST_BUILD) build-fuzz
