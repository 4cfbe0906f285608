"""Limits on what the senders may do: rates and concurrent associations.

``rate`` (the GCRA limiter: files/s, bytes/s, burst, debt; in-process), ``rate_redis`` (the
same semantics in one Redis Lua script, shared by a fleet), ``slots`` (a fleet-wide cap on
associations per destination: expiring leases in Redis).
"""
