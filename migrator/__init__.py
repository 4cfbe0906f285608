"""pacs-migrator: DICOM bulk migration that accounts for every file."""
