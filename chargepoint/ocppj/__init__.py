"""OCPP-J 1.6 protocol core: frames, compiled schema validation and the RPC session.

`frames` and `schemas` are pure (no asyncio, no clock); `session` is the asyncio
RPC layer that the transport adapter drives by feeding text frames.
"""
