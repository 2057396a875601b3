"""The `prism` command line: talks to the PRISM REST API over HTTP."""
