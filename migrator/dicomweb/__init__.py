"""DICOMweb pieces of the STOW-RS destination (``migrator.transfer.stow``): the multipart
body streamed from files (``multipart``), the per-instance answer (``response``) and the
credentials read from files (``auth``)."""
