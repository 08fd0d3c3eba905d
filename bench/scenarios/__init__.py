"""One module per scenario; each yields result records that bench/report.py renders."""
