"""Adapters that speak each wire protocol and implement the engine ports."""
