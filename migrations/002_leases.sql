-- Ferrite region schema, version 2: DHCP leases per rack, per-subnet boot
-- methods and NTP servers.

-- Leases as each rack reports them (ReportLeases): the latest state of every
-- address a rack handed out. 001's table (keyed by address alone, never
-- written) is replaced: two racks may serve the same relayed subnet.
DROP TABLE leases;
CREATE TABLE leases (
    rack_id  text NOT NULL REFERENCES racks (id) ON DELETE CASCADE,
    ip       inet NOT NULL,
    mac      macaddr NOT NULL,
    hostname text NOT NULL DEFAULT '',
    expires  timestamptz NOT NULL,
    state    text NOT NULL CHECK (state IN ('active', 'released', 'expired', 'declined')),
    updated  timestamptz NOT NULL,
    PRIMARY KEY (rack_id, ip)
);
CREATE INDEX leases_mac ON leases (mac);

-- Boot methods a subnet does not offer (MAAS's disabled_boot_architectures:
-- ipxe, pxe, uefi_amd64_tftp, uefi_amd64_http, uefi_arm64_tftp,
-- uefi_arm64_http) and the NTP servers DHCP hands out (option 42).
ALTER TABLE subnets
    ADD COLUMN IF NOT EXISTS disabled_boot_methods text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS ntp_servers inet[] NOT NULL DEFAULT '{}';
