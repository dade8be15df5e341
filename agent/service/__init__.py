"""The device service: configuration, camera sources, MQTT sinks and contract, spool, presence, commands and the
agent's run loop.
"""
