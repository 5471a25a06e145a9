# Build and install defragd.
#   make                       build the release binaries
#   sudo make install          install (PREFIX=/usr/local, DESTDIR= for packaging)
#   sudo make uninstall        remove what install put in place (config and
#                              state are kept; PURGE=1 removes them too)
#   make deb                   target/debian/defragd_*.deb (needs cargo-deb)
#   make rpm                   target/generate-rpm/defragd-*.rpm (needs
#                              cargo-generate-rpm)
#   sudo packaging/check       build both, lint, install, verify, purge
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
# What the packages take besides the binaries, laid out by kind.
PKG      := target/package
# --fast: quicker, larger .deb (packaging/check uses it; releases should not).
CARGO_DEB_FLAGS ?=

.PHONY: all build docs install uninstall package-files deb rpm

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

# The unit with the packages' paths, man pages gzipped (as Debian policy
# and lintian want; man reads them on every distribution), completions, and
# stripped binaries for the rpm (cargo-deb strips its own, keeping the
# symbols in a -dbgsym package).
package-files: docs
	rm -rf $(PKG)
	install -d $(PKG)/bin $(PKG)/man8 $(PKG)/bash $(PKG)/zsh $(PKG)/fish
	strip -o $(PKG)/bin/defragd target/release/defragd
	strip -o $(PKG)/bin/defragctl target/release/defragctl
	sed 's|/usr/local/bin/|/usr/bin/|g; s|^# Installed by `make install`.*|# Installed by the defragd package.|' \
		systemd/defragd.service > $(PKG)/defragd.service
	for page in $(DOCS)/*.8; do gzip -9n < $$page > $(PKG)/man8/$${page##*/}.gz; done
	install -m 0644 $(DOCS)/defragd.bash $(PKG)/bash/defragd
	install -m 0644 $(DOCS)/defragctl.bash $(PKG)/bash/defragctl
	install -m 0644 $(DOCS)/_defragd $(DOCS)/_defragctl $(PKG)/zsh/
	install -m 0644 $(DOCS)/defragd.fish $(DOCS)/defragctl.fish $(PKG)/fish/

deb: package-files
	cargo deb --no-build --dbgsym $(CARGO_DEB_FLAGS)

rpm: package-files
	cargo generate-rpm
