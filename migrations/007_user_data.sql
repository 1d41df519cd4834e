-- Ferrite region schema, version 7: the operator's user-data for a
-- deployment (ferrite machines deploy --user-data FILE), served by the
-- metadata API's user-data to the installed system once the machine is
-- Deploying with netboot off or Deployed. Set by every deploy (NULL when none
-- was given) and cleared by release. Its size bound (store.MaxUserData) is
-- checked by the store, not here, so that it can change without a migration.

ALTER TABLE machines ADD COLUMN user_data bytea;
