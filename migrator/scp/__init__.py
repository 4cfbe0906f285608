"""The receiving side: ``migrator scp``, a Storage SCP that files what it receives.

``server`` (the receiver's lifecycle: listener, TLS, one association per thread on
``migrator.dul.acceptor``), ``receiving`` (what each association and C-STORE gets: statuses,
log lines), ``incoming`` (meta written first, the dataset appended as it arrives, renamed
into place), ``guards`` (slots per address), ``storage`` (path safety), ``network`` (listen
errors), ``faults`` (fault injection for tests), ``stats`` (counters and log lines).
"""
