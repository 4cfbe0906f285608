"""The receiving side: ``migrator scp``, a Storage SCP that files what it receives.

``server`` (the receiver: C-STORE/C-ECHO handling on pynetdicom), ``network`` (pynetdicom's
server, request handler and PDU reads hardened against broken peers), ``storage`` (path-safe,
atomic writes), ``faults`` (fault injection for tests), ``stats`` (counters and log lines).
"""
