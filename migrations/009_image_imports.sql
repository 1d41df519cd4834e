-- Image imports (ferrite images import): one row per request. The region
-- holding the "import" singleton lock runs them one at a time in id order,
-- and resumes one left "running" by a region that died or restarted.
CREATE TABLE image_imports (
    id           bigserial PRIMARY KEY,
    source       text NOT NULL CHECK (source <> ''),   -- http(s) URL, or a directory on the region's host
    filter       jsonb NOT NULL DEFAULT '{}',          -- {"os","release","arch","subarch"}, "" = any
    state        text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
    error        text NOT NULL DEFAULT '',
    bytes_done   bigint NOT NULL DEFAULT 0 CHECK (bytes_done >= 0),
    bytes_total  bigint NOT NULL DEFAULT 0 CHECK (bytes_total >= 0),
    files_done   integer NOT NULL DEFAULT 0 CHECK (files_done >= 0),
    files_total  integer NOT NULL DEFAULT 0 CHECK (files_total >= 0),
    current_item text NOT NULL DEFAULT '',            -- "product P version V item I" being fetched
    resources    jsonb NOT NULL DEFAULT '[]',          -- ["ubuntu/noble amd64/ga-24.04", ...] once done
    skipped      jsonb NOT NULL DEFAULT '[]',          -- what the source offered that was not imported, and why
    region       text NOT NULL DEFAULT '',             -- the region that ran it last
    attempts     integer NOT NULL DEFAULT 0,           -- times a region started (or resumed) it
    created      timestamptz NOT NULL DEFAULT now(),
    started      timestamptz,
    finished     timestamptz
);
CREATE INDEX image_imports_active ON image_imports (id) WHERE state IN ('queued', 'running');

-- Resumable blob writes. An incomplete blob written by an import records
-- the sha256 and size it must end with and the sha256 state after its
-- committed chunks (Go's encoding.BinaryMarshaler form), so a restarted
-- region continues where the last commit left off; size is then the number
-- of committed bytes, always a multiple of chunk_size. OpenBlob and
-- BlobExists only ever see complete blobs.
ALTER TABLE blobs ADD COLUMN expected_sha256 text CHECK (expected_sha256 ~ '^[0-9a-f]{64}$');
ALTER TABLE blobs ADD COLUMN expected_size bigint CHECK (expected_size >= 0);
ALTER TABLE blobs ADD COLUMN hash_state bytea;
-- The import that wrote the blob (kept after it completes, so a failed
-- import can remove what it stored and the collector spares a running one's).
ALTER TABLE blobs ADD COLUMN import_id bigint REFERENCES image_imports (id) ON DELETE SET NULL;
-- Last time a writer produced or reused the blob: unreferenced blobs are
-- collected only some time after it.
ALTER TABLE blobs ADD COLUMN touched timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX blobs_partial_expected ON blobs (expected_sha256) WHERE NOT complete;
CREATE INDEX blobs_import ON blobs (import_id) WHERE import_id IS NOT NULL;
