"""`python -m xorweights.cli`: the `xorweights` command."""

from xorweights.cli import main

if __name__ == "__main__":
    main()
