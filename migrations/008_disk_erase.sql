-- Ferrite region schema, version 8: release --erase. A released machine
-- whose disks must be erased goes to Disk erasing (failure: Failed disk
-- erasing), boots the ephemeral environment and erases them as erase_mode
-- says: full (every byte zeroed) or quick (the first and last 2 MiB of each
-- disk). The mode is kept until the next release --erase sets it again.

ALTER TABLE machines DROP CONSTRAINT machines_status_known;
ALTER TABLE machines ADD CONSTRAINT machines_status_known CHECK (status IN (
    'New', 'Commissioning', 'Failed commissioning', 'Ready', 'Allocated', 'Deploying',
    'Failed deployment', 'Deployed', 'Releasing', 'Failed releasing', 'Disk erasing',
    'Failed disk erasing', 'Entering rescue mode', 'Rescue mode', 'Failed to enter rescue mode',
    'Exiting rescue mode', 'Failed to exit rescue mode', 'Testing', 'Failed testing', 'Broken'));
ALTER TABLE machines ADD COLUMN erase_mode text CHECK (erase_mode IN ('full', 'quick'));
