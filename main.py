"""Start the Workbench window."""

from workbench.cli import gui_main

if __name__ == "__main__":
    raise SystemExit(gui_main())
