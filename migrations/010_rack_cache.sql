-- What each rack's boot resource cache holds, as the rack last reported it
-- (RackService.ReportCache). Each report replaces the rack's previous one:
-- one rack_cache_reports row per rack, and its files in rack_cache_files.
-- `ferrite racks show` compares the files with what the region wants the
-- rack to hold (every boot resource file).
CREATE TABLE rack_cache_reports (
    rack_id        text PRIMARY KEY REFERENCES racks (id) ON DELETE CASCADE,
    reported       timestamptz NOT NULL DEFAULT now(),  -- when the region received it
    rack_time      timestamptz,                          -- when the rack took the snapshot (its clock)
    synced_version bigint NOT NULL DEFAULT 0,            -- RackConfig.version the rack last finished a sync of
    syncing        boolean NOT NULL DEFAULT false,
    region         text NOT NULL DEFAULT ''              -- the region address the report came through
);

CREATE TABLE rack_cache_files (
    rack_id     text NOT NULL REFERENCES rack_cache_reports (rack_id) ON DELETE CASCADE,
    -- No reference to blobs: a rack may hold files the region no longer has.
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint NOT NULL CHECK (size >= 0),      -- bytes held (all of it when complete)
    complete    boolean NOT NULL,
    downloading boolean NOT NULL DEFAULT false,
    error       text NOT NULL DEFAULT '',               -- last failed download, '' after a success
    error_time  timestamptz,
    PRIMARY KEY (rack_id, sha256)
);

-- Region gRPC addresses each rack has called lately (config stream, reports),
-- so an operator sees which regions a rack is connected to.
CREATE TABLE rack_region_contacts (
    rack_id   text NOT NULL REFERENCES racks (id) ON DELETE CASCADE,
    region    text NOT NULL CHECK (region <> ''),       -- host:port the rack reached
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rack_id, region)
);
