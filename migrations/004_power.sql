-- Ferrite region schema, version 4: power. machines.power_type and
-- power_parameters come from 001; this adds what the BMC last said and the
-- power commands the region hands to the rack that can reach the BMC.

ALTER TABLE machines
    ADD COLUMN power_state text NOT NULL DEFAULT 'unknown'
        CHECK (power_state IN ('on', 'off', 'unknown')),
    ADD COLUMN power_state_updated timestamptz;

-- One row per power action asked of a machine's BMC. A queued command is
-- streamed to its rack (WatchPowerCommands) and becomes sent; the rack's
-- ReportPowerResult makes it done or failed; one not finished by its
-- deadline is failed "timed out" by the region. manual machines have no
-- rack: their commands are done at once.
CREATE TABLE power_commands (
    id           bigserial PRIMARY KEY,
    system_id    text NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    action       text NOT NULL CHECK (action IN ('on', 'off', 'cycle', 'query', 'set_boot_pxe')),
    power_type   text NOT NULL,
    rack_id      text REFERENCES racks (id) ON DELETE SET NULL,
    status       text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'done', 'failed')),
    result_state text NOT NULL DEFAULT '' CHECK (result_state IN ('', 'on', 'off', 'unknown')),
    error        text NOT NULL DEFAULT '',
    created      timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    finished_at  timestamptz,
    deadline     timestamptz NOT NULL,
    CHECK ((status IN ('done', 'failed')) = (finished_at IS NOT NULL))
);
CREATE INDEX power_commands_open ON power_commands (rack_id, id) WHERE status IN ('queued', 'sent');
CREATE INDEX power_commands_machine ON power_commands (system_id, id);
