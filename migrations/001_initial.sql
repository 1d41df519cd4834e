-- Ferrite region schema, version 1.
-- Applied by jackc/tern (text/template: a literal double brace must be escaped).
-- MACs are macaddr (stored and returned lowercase colon form); IPs are inet.

-- Key/value settings operators change (commissioning_image, kernel_opts, ...).
CREATE TABLE config (
    key     text PRIMARY KEY,
    value   text NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);

-- Region-wide secrets: rpc_shared_secret, region_ca_cert, region_ca_key, ...
CREATE TABLE secrets (
    name    text PRIMARY KEY,
    value   bytea NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);

-- Operator API tokens; only the sha256 of a token is stored.
CREATE TABLE api_tokens (
    id        bigserial PRIMARY KEY,
    name      text NOT NULL UNIQUE,
    sha256    bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),
    created   timestamptz NOT NULL DEFAULT now(),
    last_used timestamptz
);

-- Region processes, for GET /MAAS/rpc/ (live = recently seen).
CREATE TABLE regions (
    name           text PRIMARY KEY,
    grpc_endpoints text[] NOT NULL DEFAULT '{}',
    created        timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE racks (
    id        text PRIMARY KEY CHECK (id ~ '^rack-[a-z0-9]+$'),
    name      text NOT NULL UNIQUE CHECK (name <> ''),
    version   text NOT NULL DEFAULT '',
    created   timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rack_interfaces (
    rack_id   text NOT NULL REFERENCES racks (id) ON DELETE CASCADE,
    name      text NOT NULL,
    mac       macaddr,
    addresses text[] NOT NULL DEFAULT '{}', -- as the rack reports them, e.g. 10.0.0.2/24
    PRIMARY KEY (rack_id, name)
);

CREATE TABLE subnets (
    id                bigserial PRIMARY KEY,
    cidr              cidr NOT NULL,
    gateway           inet,
    dns_servers       inet[] NOT NULL DEFAULT '{}',
    domain            text NOT NULL DEFAULT '',
    mtu               integer NOT NULL DEFAULT 1500 CHECK (mtu BETWEEN 68 AND 65535),
    primary_rack_id   text REFERENCES racks (id) ON DELETE SET NULL,
    secondary_rack_id text REFERENCES racks (id) ON DELETE SET NULL,
    -- Addresses of DHCP relay agents (giaddr) that forward this subnet's
    -- requests to its racks; empty when the racks are attached directly.
    relay_agents      inet[] NOT NULL DEFAULT '{}',
    created           timestamptz NOT NULL DEFAULT now(),
    updated           timestamptz NOT NULL DEFAULT now(),
    CHECK (gateway IS NULL OR gateway << cidr),
    CHECK (secondary_rack_id IS NULL OR secondary_rack_id IS DISTINCT FROM primary_rack_id),
    -- No two subnets overlap (GiST on inet_ops is built in: no extension needed).
    CONSTRAINT subnets_no_overlap EXCLUDE USING gist (cidr inet_ops WITH &&)
);
CREATE INDEX subnets_primary_rack ON subnets (primary_rack_id);
CREATE INDEX subnets_secondary_rack ON subnets (secondary_rack_id);

-- Dynamic (DHCP pool) and reserved (never handed out) ranges of a subnet.
CREATE TABLE ip_ranges (
    id        bigserial PRIMARY KEY,
    subnet_id bigint NOT NULL REFERENCES subnets (id) ON DELETE CASCADE,
    kind      text NOT NULL CHECK (kind IN ('dynamic', 'reserved')),
    start_ip  inet NOT NULL,
    end_ip    inet NOT NULL,
    comment   text NOT NULL DEFAULT '',
    CHECK (family(start_ip) = family(end_ip) AND start_ip <= end_ip)
);
CREATE INDEX ip_ranges_subnet ON ip_ranges (subnet_id);

CREATE TABLE machines (
    system_id          text PRIMARY KEY CHECK (system_id ~ '^[a-z0-9]{6}$'),
    hostname           text NOT NULL UNIQUE,
    status             text NOT NULL DEFAULT 'New',
    arch               text NOT NULL,               -- amd64
    subarch            text NOT NULL DEFAULT 'generic',
    hardware_uuid      text,                         -- lowercase; not unique (cheap boards repeat them)
    cpu_count          integer NOT NULL DEFAULT 0,
    memory_mb          bigint NOT NULL DEFAULT 0,
    power_type         text NOT NULL DEFAULT '',
    power_parameters   jsonb NOT NULL DEFAULT '{}',
    boot_interface_id  bigint,                       -- FK added below
    netboot            boolean NOT NULL DEFAULT true,
    owner              text,
    deploy_image       text,                         -- boot resource name, e.g. ubuntu/jammy
    -- Per-machine OAuth 1.0 PLAINTEXT credentials for the metadata API.
    oauth_consumer_key text,
    oauth_token_key    text UNIQUE,
    oauth_token_secret text,
    created            timestamptz NOT NULL DEFAULT now(),
    updated            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX machines_hardware_uuid ON machines (hardware_uuid);

CREATE TABLE interfaces (
    id        bigserial PRIMARY KEY,
    system_id text NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    name      text NOT NULL DEFAULT '',
    mac       macaddr NOT NULL UNIQUE,
    ip        inet,
    created   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX interfaces_system_id ON interfaces (system_id);

ALTER TABLE machines ADD CONSTRAINT machines_boot_interface_fk
    FOREIGN KEY (boot_interface_id) REFERENCES interfaces (id) ON DELETE SET NULL
    DEFERRABLE INITIALLY DEFERRED;

-- DHCP leases as racks report them.
CREATE TABLE leases (
    ip        inet PRIMARY KEY,
    mac       macaddr NOT NULL,
    subnet_id bigint REFERENCES subnets (id) ON DELETE CASCADE,
    rack_id   text REFERENCES racks (id) ON DELETE SET NULL,
    hostname  text NOT NULL DEFAULT '',
    starts    timestamptz NOT NULL DEFAULT now(),
    expires   timestamptz NOT NULL
);
CREATE INDEX leases_mac ON leases (mac);

-- Boot history. system_id is not a foreign key: events outlive machines.
CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    time        timestamptz NOT NULL DEFAULT now(),
    type        text NOT NULL,
    system_id   text,
    mac         macaddr,
    ip          inet,
    rack        text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT ''
);
CREATE INDEX events_time ON events (time, id);
CREATE INDEX events_mac ON events (mac, time, id) WHERE mac IS NOT NULL;
CREATE INDEX events_system_id ON events (system_id, time, id) WHERE system_id IS NOT NULL;

-- Content-addressed files, stored as 1 MiB chunks. A blob row gets its
-- sha256 and complete = true in the same transaction that wrote its chunks,
-- so a half-written blob is never visible under its sha256.
CREATE TABLE blobs (
    id         bigserial PRIMARY KEY,
    sha256     text UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size       bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    chunk_size integer NOT NULL CHECK (chunk_size > 0),
    complete   boolean NOT NULL DEFAULT false,
    created    timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT complete OR sha256 IS NOT NULL)
);

CREATE TABLE blob_chunks (
    blob_id bigint NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
    seq     integer NOT NULL CHECK (seq >= 0),
    data    bytea NOT NULL,
    PRIMARY KEY (blob_id, seq)
);
-- Kernels and initrds are already compressed: store out of line, uncompressed.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE boot_resources (
    id      bigserial PRIMARY KEY,
    name    text NOT NULL CHECK (name <> ''),   -- custom/ephemeral, ubuntu/jammy
    arch    text NOT NULL CHECK (arch <> ''),   -- amd64/generic
    kind    text NOT NULL,                      -- kernel-initrd
    created timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, arch)
);

CREATE TABLE boot_resource_files (
    resource_id bigint NOT NULL REFERENCES boot_resources (id) ON DELETE CASCADE,
    filename    text NOT NULL CHECK (filename <> '' AND filename !~ '/'),
    sha256      text NOT NULL REFERENCES blobs (sha256),
    size        bigint NOT NULL,
    PRIMARY KEY (resource_id, filename)
);
CREATE INDEX boot_resource_files_sha256 ON boot_resource_files (sha256);

-- Output of commissioning scripts, one row per script run.
CREATE TABLE commissioning_results (
    id          bigserial PRIMARY KEY,
    system_id   text NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    name        text NOT NULL,             -- script name, e.g. 00-lshw
    exit_status integer,
    output      bytea NOT NULL DEFAULT '',
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commissioning_results_machine ON commissioning_results (system_id, name, created);
