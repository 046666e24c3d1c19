"""Local emulators of the providers' batch APIs, for development and tests."""
