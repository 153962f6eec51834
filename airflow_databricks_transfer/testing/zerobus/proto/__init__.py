"""The Zerobus wire messages: ``zerobus_service.proto`` and its generated (checked-in) module."""
