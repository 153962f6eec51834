"""Runnable emulators of the services this provider talks to, with built-in fault injection."""
