"""Start the Workbench window."""

from workbench.app import main

if __name__ == "__main__":
    raise SystemExit(main())
