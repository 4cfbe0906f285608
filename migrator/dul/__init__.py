"""A lean DICOM Upper Layer (PS3.8), both sides, synchronous: one thread per association.

Why our own: pynetdicom's reactor thread costs ~2 ms of CPU per C-STORE and races with
``send_c_store`` against fast peers (BENCHMARKS.md). A requestor that only sends C-STORE and
C-ECHO needs a small, synchronous subset of the protocol: associate, P-DATA, release, abort
(``association``); every byte is written by the calling thread with ``sendmsg`` and no
thread polls. ``retrieving`` adds C-GET and C-MOVE requests to it (the old PACS as a
source: a C-GET's C-STORE sub-operations come back on the requesting thread). The acceptor
(``acceptor``, ``acse``, ``reader``, ``listener``) is the same subset seen from the other
side: it receives C-STORE datasets in bounded pieces into a sink, and answers C-ECHO.
"""
