"""The HTTP API: thin routes over commands and views."""
