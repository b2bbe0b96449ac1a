"""Articles files and templates made into a checked Manifest. Imports only core."""
