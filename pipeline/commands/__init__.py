"""One module per CLI command (`python -m pipeline.run <command>`), each with `add_parser` and
`main(args) -> exit code`. Frameworks are imported inside `main`, never at import time, so the
parser and `--help` stay instant."""
