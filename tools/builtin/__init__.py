"""The built-in tools, registered by dotted path in settings.MAGEAGENT_TOOLS."""
