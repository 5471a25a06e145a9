# Build and install defragd.
#   make                       build the release binaries
#   sudo make install          install (PREFIX=/usr/local, DESTDIR= for packaging)
#   sudo make uninstall        remove what install put in place (config and
#                              state are kept; PURGE=1 removes them too)
# After install: systemctl daemon-reload && systemctl enable --now defragd

PREFIX   ?= /usr/local
DESTDIR  ?=
BINDIR   ?= $(PREFIX)/bin
MANDIR   ?= $(PREFIX)/share/man/man8
UNITDIR  ?= /etc/systemd/system
CONFDIR  ?= /etc/defragd
BASHDIR  ?= $(PREFIX)/share/bash-completion/completions
ZSHDIR   ?= $(PREFIX)/share/zsh/site-functions
FISHDIR  ?= $(PREFIX)/share/fish/vendor_completions.d
DOCS     := target/docs

.PHONY: all build docs install uninstall

all: build

build:
	cargo build --release --locked

docs: build
	rm -rf $(DOCS)
	target/release/defragd generate-docs $(DOCS)
	target/release/defragctl generate-docs $(DOCS)

install: docs
	install -D -m 0755 target/release/defragd $(DESTDIR)$(BINDIR)/defragd
	install -D -m 0755 target/release/defragctl $(DESTDIR)$(BINDIR)/defragctl
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/|$(BINDIR)/|g; s|/etc/defragd/|$(CONFDIR)/|g' systemd/defragd.service \
		> $(DESTDIR)$(UNITDIR)/defragd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/defragd.service
	install -d -m 0755 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(CONFDIR)/conf.d
	@# Never overwrite an operator's config.
	test -e $(DESTDIR)$(CONFDIR)/defragd.toml || install -m 0644 etc/defragd.toml $(DESTDIR)$(CONFDIR)/defragd.toml
	install -d $(DESTDIR)$(MANDIR)
	install -m 0644 $(DOCS)/*.8 $(DESTDIR)$(MANDIR)/
	install -D -m 0644 $(DOCS)/defragd.bash $(DESTDIR)$(BASHDIR)/defragd
	install -D -m 0644 $(DOCS)/defragctl.bash $(DESTDIR)$(BASHDIR)/defragctl
	install -D -m 0644 $(DOCS)/_defragd $(DESTDIR)$(ZSHDIR)/_defragd
	install -D -m 0644 $(DOCS)/_defragctl $(DESTDIR)$(ZSHDIR)/_defragctl
	install -D -m 0644 $(DOCS)/defragd.fish $(DESTDIR)$(FISHDIR)/defragd.fish
	install -D -m 0644 $(DOCS)/defragctl.fish $(DESTDIR)$(FISHDIR)/defragctl.fish

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/defragd $(DESTDIR)$(BINDIR)/defragctl
	rm -f $(DESTDIR)$(UNITDIR)/defragd.service
	rm -f $(DESTDIR)$(MANDIR)/defragd.8 $(DESTDIR)$(MANDIR)/defragd-*.8
	rm -f $(DESTDIR)$(MANDIR)/defragctl.8 $(DESTDIR)$(MANDIR)/defragctl-*.8
	rm -f $(DESTDIR)$(BASHDIR)/defragd $(DESTDIR)$(BASHDIR)/defragctl
	rm -f $(DESTDIR)$(ZSHDIR)/_defragd $(DESTDIR)$(ZSHDIR)/_defragctl
	rm -f $(DESTDIR)$(FISHDIR)/defragd.fish $(DESTDIR)$(FISHDIR)/defragctl.fish
ifeq ($(PURGE),1)
	rm -rf $(DESTDIR)$(CONFDIR) $(DESTDIR)/var/lib/defragd
endif
