# `make run` opens the window, `make test` runs every test. Both create .venv
# and install the project into it first, only when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# `make install-desktop` puts the launcher and icon in the user's menu; DATA_HOME picks where.
DATA_HOME ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)
ICON_SIZES := 16 32 48 64 128 256

.PHONY: run test lint bench screenshot install-desktop uninstall-desktop

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip >/dev/null
	$(VENV)/bin/python -m pip install --no-cache-dir -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python main.py

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check workbench tests benchmarks

screenshot: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python benchmarks/screenshot.py docs/screenshot.png

install-desktop: $(STAMP)
	for n in $(ICON_SIZES); do \
		install -D -m 644 resources/icons/hicolor/$${n}x$${n}/apps/workbench.png \
			'$(DATA_HOME)'/icons/hicolor/$${n}x$${n}/apps/workbench.png || exit 1; \
	done
	install -D -m 644 resources/icons/workbench.svg '$(DATA_HOME)'/icons/hicolor/scalable/apps/workbench.svg
	mkdir -p '$(DATA_HOME)'/applications
	sed 's|^Exec=workbench |Exec=$(CURDIR)/$(VENV)/bin/workbench |' resources/workbench.desktop \
		> '$(DATA_HOME)'/applications/workbench.desktop
	-if command -v update-desktop-database >/dev/null; then update-desktop-database '$(DATA_HOME)'/applications; fi
	-if command -v gtk-update-icon-cache >/dev/null; then gtk-update-icon-cache -q -t '$(DATA_HOME)'/icons/hicolor; fi

uninstall-desktop:
	for n in $(ICON_SIZES); do rm -f '$(DATA_HOME)'/icons/hicolor/$${n}x$${n}/apps/workbench.png; done
	rm -f '$(DATA_HOME)'/icons/hicolor/scalable/apps/workbench.svg '$(DATA_HOME)'/applications/workbench.desktop
	-if command -v update-desktop-database >/dev/null; then update-desktop-database '$(DATA_HOME)'/applications; fi
	-if command -v gtk-update-icon-cache >/dev/null; then gtk-update-icon-cache -q -t '$(DATA_HOME)'/icons/hicolor; fi
