"""Interactive calibration report: plotly figures from plain data, one offline HTML page."""
