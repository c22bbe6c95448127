"""GxP traceability: the tamper-evident audit trail, its publisher, and the Installation Qualification report."""
