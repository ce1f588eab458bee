"""`python -m labquant.train` == `labquant-train`."""

from labquant.cli.train import main

if __name__ == "__main__":
    main()
