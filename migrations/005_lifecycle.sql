-- Ferrite region schema, version 5: the machine lifecycle (MAAS's node
-- states and transitions, regiond/internal/store/lifecycle.go). netboot,
-- owner and deploy_image come from 001.
--
-- status_expires: when a machine in a monitored state (Commissioning,
-- Deploying, Testing, Entering/Exiting rescue mode, Releasing) times out and
-- is moved to its Failed state; NULL in every other state. It restarts
-- whenever the machine PXE boots.
-- previous_status: the state an action started from, where abort, exit
-- rescue and mark-fixed return to.
-- error_description: why the machine failed or was marked broken.

ALTER TABLE machines
    ADD COLUMN status_expires timestamptz,
    ADD COLUMN previous_status text NOT NULL DEFAULT '',
    ADD COLUMN error_description text NOT NULL DEFAULT '';

ALTER TABLE machines ADD CONSTRAINT machines_status_known CHECK (status IN (
    'New', 'Commissioning', 'Failed commissioning', 'Ready', 'Allocated', 'Deploying',
    'Failed deployment', 'Deployed', 'Releasing', 'Failed releasing', 'Entering rescue mode',
    'Rescue mode', 'Failed to enter rescue mode', 'Exiting rescue mode',
    'Failed to exit rescue mode', 'Testing', 'Failed testing', 'Broken'));

CREATE INDEX machines_status_expires ON machines (status_expires) WHERE status_expires IS NOT NULL;
