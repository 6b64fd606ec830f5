-- The simulated backend's shared store, for composite resources: ports and
-- floating IPs join instances and volumes, and volumes and floating IPs can
-- be attached to an instance. Written only by src/backend/sim/shared.rs.

ALTER TABLE sim_objects DROP CONSTRAINT sim_objects_kind_check;
ALTER TABLE sim_objects ADD CONSTRAINT sim_objects_kind_check
    CHECK (kind IN ('instance', 'volume', 'port', 'floating_ip'));

ALTER TABLE sim_objects DROP CONSTRAINT sim_objects_runtime_state_check;
ALTER TABLE sim_objects ADD CONSTRAINT sim_objects_runtime_state_check
    CHECK (runtime_state IN (
        'BUILD', 'ACTIVE', 'SHUTOFF', 'REBOOT', 'RESIZE', 'DELETING', 'ERROR',
        'creating', 'available', 'extending', 'deleting', 'error',
        'in-use', 'DOWN'));

ALTER TABLE sim_objects DROP CONSTRAINT sim_objects_next_state_check;
ALTER TABLE sim_objects ADD CONSTRAINT sim_objects_next_state_check
    CHECK (next_state IN (
        'BUILD', 'ACTIVE', 'SHUTOFF', 'REBOOT', 'RESIZE', 'DELETING', 'ERROR',
        'creating', 'available', 'extending', 'deleting', 'error',
        'in-use', 'DOWN', 'gone'));

-- The backend id of the instance a volume or floating IP is attached to. An
-- attached volume is 'in-use', and only while attached; nothing attached is
-- being deleted (a delete of an attached object is refused).
ALTER TABLE sim_objects ADD COLUMN attached_to text;
ALTER TABLE sim_objects ADD CONSTRAINT sim_objects_attachable
    CHECK (attached_to IS NULL OR kind IN ('volume', 'floating_ip'));
ALTER TABLE sim_objects ADD CONSTRAINT sim_objects_in_use_when_attached
    CHECK (kind <> 'volume' OR (attached_to IS NOT NULL) = (runtime_state = 'in-use'));
ALTER TABLE sim_objects ADD CONSTRAINT sim_objects_attached_not_deleting
    CHECK (attached_to IS NULL OR next_state IS DISTINCT FROM 'gone');

-- An instance delete looks up what is attached to it.
CREATE INDEX sim_objects_attached_to ON sim_objects (attached_to) WHERE attached_to IS NOT NULL;
