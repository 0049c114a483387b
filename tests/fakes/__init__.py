"""Local stand-ins for third-party services (search providers, web sites, GraphRAG),
served by aiohttp on 127.0.0.1 so tests never need the internet."""
