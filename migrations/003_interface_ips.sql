-- Ferrite region schema, version 3: fixed addresses for machine interfaces
-- (DHCP reservations, MAAS's static IPs). interfaces.ip (from 001, unused
-- until now) holds a single address, never a network, and no two
-- interfaces share one.

ALTER TABLE interfaces
    ADD CONSTRAINT interfaces_ip_is_host
    CHECK (ip IS NULL OR masklen(ip) = CASE family(ip) WHEN 4 THEN 32 ELSE 128 END);
CREATE UNIQUE INDEX interfaces_ip_unique ON interfaces (ip) WHERE ip IS NOT NULL;
