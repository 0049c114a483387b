"""``python -m devtools.simulator`` -- run the LLM simulator (development/test tool)."""

from .server import main

if __name__ == "__main__":
    main()
