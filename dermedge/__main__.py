"""`python -m dermedge`: the same as the `dermedge` command."""

from dermedge.cli import main

if __name__ == "__main__":
    main()
