"""Everything the PRISM Lambdas run. Chalice packages this folder beside app.py."""
