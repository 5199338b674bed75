"""The HTTP API (OpenAI-compatible) and the MCP server, sharing limits, paths and requests."""
