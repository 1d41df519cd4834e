-- Ferrite region schema, version 6: what the metadata API needs
-- (regiond/internal/store/metadata.go). The per-machine OAuth credentials
-- (machines.oauth_*) and commissioning_results come from 001.
--
-- disk_count, storage_bytes: the summary of the last commissioning
-- inventory beside cpu_count and memory_mb (the whole inventory is the
-- commissioning result "inventory.json").

ALTER TABLE machines
    ADD COLUMN disk_count integer NOT NULL DEFAULT 0 CHECK (disk_count >= 0),
    ADD COLUMN storage_bytes bigint NOT NULL DEFAULT 0 CHECK (storage_bytes >= 0);
