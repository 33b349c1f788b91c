"""The slow-client front: an asyncio HTTP/1.1 proxy that reads whole requests before gunicorn sees them."""
