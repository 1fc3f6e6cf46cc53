-- Datasets can be deleted once no job can read them again, while completed
-- and deployed jobs keep naming theirs as a record: a job's dataset
-- references are no longer foreign keys. A new job must still name existing
-- datasets; the trigger checks that, and its KEY SHARE lock makes a job
-- insert and a concurrent dataset delete serialize, as the foreign key did.
ALTER TABLE jobs
    DROP CONSTRAINT jobs_training_dataset_id_fkey,
    DROP CONSTRAINT jobs_validation_dataset_id_fkey;

CREATE FUNCTION jobs_dataset_exists() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM datasets WHERE id = NEW.training_dataset_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dataset % does not exist', NEW.training_dataset_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'jobs_dataset_exists';
    END IF;
    IF NEW.validation_dataset_id IS NOT NULL THEN
        PERFORM 1 FROM datasets WHERE id = NEW.validation_dataset_id FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'dataset % does not exist', NEW.validation_dataset_id
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'jobs_dataset_exists';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_dataset_exists
    BEFORE INSERT OR UPDATE OF training_dataset_id, validation_dataset_id ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_dataset_exists();

-- A dataset's delete looks up the jobs that use it.
CREATE INDEX jobs_training_dataset ON jobs (training_dataset_id);
CREATE INDEX jobs_validation_dataset ON jobs (validation_dataset_id) WHERE validation_dataset_id IS NOT NULL;
